"""The review page's rendering code shows untrusted text as text, checked without a browser.

tests/page_render.js runs the page's own script (tweetgen/web/static/app.js) under Node with a
small document in which every string-to-markup or string-to-code API throws, renders a tweet
whose every text field is hostile markup, and reports what was built. tests/test_browser.py
checks the same in Chromium, where it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP_JS = ROOT / "tweetgen" / "web" / "static" / "app.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the page's script")

HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> & "quoted" \'single\''
ESCAPED = ("&lt;img src=x onerror=\"window.pwned=1\"&gt;&lt;script&gt;window.pwned=2&lt;/script&gt;"
           " &amp; \"quoted\" 'single'")


def render(tweet: dict, app_js: Path = APP_JS) -> dict:
    result = subprocess.run([NODE, str(ROOT / "tests" / "page_render.js"), str(app_js), json.dumps(tweet)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def hostile_tweet() -> dict:
    return {"id": 7, "text": HOSTILE, "seed": HOSTILE, "temperature": 0.8, "top_k": 0,
            "checkpoint_id": 1, "checkpoint_step": 20, "mean_logprob": -2.0, "copied": False,
            "novelty": 0.5, "source": HOSTILE, "mode": "continue", "ended": "eos", "status": "new",
            "created": "2026-12-01T00:00:00+00:00", "reviewed": None}


def test_a_hostile_tweet_is_rendered_as_text() -> None:
    result = render(hostile_tweet())
    assert result["cells"].count(HOSTILE) == 2  # the text and the seed cells, character for character
    assert result["item"] == HOSTILE  # the generate box's list item
    assert "<img" not in result["html"] and "<script" not in result["html"]
    assert result["html"].count(ESCAPED) == 3  # text, seed, list item: escaped as a browser would
    assert "img" not in result["created"] and "script" not in result["created"]


@pytest.mark.parametrize("unsafe", [
    ("node.textContent = String(text);", "node.innerHTML = String(text);"),
    ("node.textContent = String(text);", "node.insertAdjacentHTML('beforeend', String(text));"),
    ("node.textContent = String(text);", "node.setAttribute('onclick', String(text));"),
    ("node.textContent = String(text);", "node.textContent = eval('String(text)');"),
])
def test_the_check_fails_for_a_page_that_renders_markup(tmp_path: Path, unsafe) -> None:
    """The harness itself: the same page with its one text sink made unsafe is caught."""
    safe, replacement = unsafe
    source = APP_JS.read_text()
    assert safe in source
    page = tmp_path / "app.js"
    page.write_text(source.replace(safe, replacement))
    result = subprocess.run([NODE, str(ROOT / "tests" / "page_render.js"), str(page),
                             json.dumps(hostile_tweet())], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "untrusted text would be parsed" in result.stderr or "Code generation" in result.stderr
