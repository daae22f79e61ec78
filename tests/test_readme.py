"""The README's configuration reference covers every setting, with its real default."""

import re
from pathlib import Path

from tweetgen.config import SETTING_NAMES, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CONFIGURATION = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def test_every_setting_is_documented_with_its_default() -> None:
    rows = {}
    for line in CONFIGURATION.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].strip("`") in SETTING_NAMES:
            rows[cells[0].strip("`")] = cells[1].strip("`")
    assert SETTING_NAMES - set(rows) == set(), "settings missing from the README table"
    assert set(rows) - SETTING_NAMES == set(), "README documents settings that do not exist"
    defaults = Settings()
    for name, documented in rows.items():
        value = getattr(defaults, name)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, float) and value.is_integer() and "." not in documented:
            value = int(value)
        assert documented.replace("'", '"') == str(value).replace("'", '"'), name


ROOT = Path(__file__).resolve().parents[1]
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
MD_PATH = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")


def relative_targets(text: str) -> set[str]:
    """Relative link targets (anchors dropped) and every path-like name ending in .md."""
    links = {target.split("#", 1)[0] for target in MARKDOWN_LINK.findall(text)
             if not re.match(r"[a-z]+:|#", target)}
    return {t for t in links if t} | set(MD_PATH.findall(text))


def test_every_relative_link_in_the_readme_exists() -> None:
    targets = relative_targets(README)
    assert "docs/distribute.md" in targets
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert missing == [], f"README points at files the repository does not hold: {missing}"


def test_docs_named_in_the_code_exist() -> None:
    sources = [*ROOT.glob("tweetgen/**/*.py"), *ROOT.glob("bench/*")]
    named = {(path.name, doc) for path in sources if path.is_file()
             for doc in re.findall(r"docs/[\w./-]+\.md", path.read_text(errors="replace"))}
    assert named, "the daemon and bench/gpu_check.sh point at docs/distribute.md"
    assert [item for item in sorted(named) if not (ROOT / item[1]).exists()] == []


def test_the_module_list_names_every_module() -> None:
    development = README.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+)`", development))
    modules = {p.stem for p in (ROOT / "tweetgen").glob("*.py")} - {"__init__"}
    web = {p.stem for p in (ROOT / "tweetgen" / "web").glob("*.py")} - {"__init__"}
    assert modules - named == set(), "modules missing from README 'Development'"
    assert "tweetgen/web/" in named and web - named == set(), "web modules missing"
