"""`tweetgen import-dialog`: ChatterBot YAML and message<TAB>reply text to corpus pairs, run as a
user runs it (a real process, files in a temp folder; the chatterbot-corpus package is not used)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tweetgen import corpus
from tweetgen.dialog import DialogError, read_dialogs

YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there!
  - How are you?
- - "Do you\\tlike tabs?"
  - |
    No,
    I like newlines.
- - yes
  - 42
- just a string, not a conversation
- - Lonely
"""

TSV = "what is up\tthe sky\nno tab on this line\n\nsay\tsomething\twith tabs\n"


def run_cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWEETGEN_")}
    return subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=120, input=stdin)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    yaml_file, tsv_file = tmp_path / "greetings.yml", tmp_path / "pairs.tsv"
    yaml_file.write_text(YAML, encoding="utf-8")
    tsv_file.write_text(TSV, encoding="utf-8")
    return yaml_file, tsv_file


EXPECTED = ["Hello\tHi there!", "Hi there!\tHow are you?", "Do you like tabs?\tNo, I like newlines.",
            "yes\t42", "what is up\tthe sky", "say\tsomething with tabs"]


def test_yaml_and_tsv_pairs_to_standard_output(tmp_path, files) -> None:
    proc = run_cli(tmp_path / "home", "import-dialog", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED
    assert "6 pairs from 2 files (skipped: 1 conversation not a list, 1 no tab)" in proc.stderr


def test_appending_to_a_corpus_keeps_its_lines_and_the_pairs_read_back(tmp_path, files) -> None:
    target = tmp_path / "corpus.txt"
    target.write_text("an old line\nanother old line\n", encoding="utf-8")
    proc = run_cli(tmp_path / "home", "import-dialog", *map(str, files), "--output", str(target), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"pairs": 6, "added": 6, "file": str(target),
                                       "skipped": {"conversation not a list": 1, "no tab": 1}}
    assert corpus.read_lines(target).lines == ["an old line", "another old line", *EXPECTED]
    # --corpus appends to the configured corpus (the daemon's), created if missing.
    home = tmp_path / "home"
    proc = run_cli(home, "import-dialog", str(files[1]), "--corpus")
    assert proc.returncode == 0, proc.stderr
    assert "appended 2 to" in proc.stdout
    assert corpus.read_lines(home / "data" / "corpus.txt").lines == EXPECTED[-2:]


@pytest.mark.parametrize("text, message", [
    ("conversations:\n- - [unclosed\n", "is not valid YAML (line 3, column 1)"),
    ("conversations: {a: 1}\n", "has no `conversations:` list"),
    ("- just\n- a list\n", "has no `conversations:` list"),
])
def test_a_malformed_file_is_one_clear_line_and_nothing_is_written(tmp_path, files, text, message) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    target = tmp_path / "corpus.txt"
    target.write_text("kept\n", encoding="utf-8")
    proc = run_cli(tmp_path / "home", "import-dialog", str(files[0]), str(bad), "--output", str(target))
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"tweetgen: error: dialog file {bad} ")
    assert message in error[0] and "Traceback" not in proc.stderr
    assert target.read_text(encoding="utf-8") == "kept\n"  # the good file before it wrote nothing


def test_unreadable_files_name_themselves(tmp_path) -> None:
    binary = tmp_path / "latin1.txt"
    binary.write_bytes(b"caf\xe9\tau lait\n")
    with pytest.raises(DialogError, match=r"latin1\.txt is not UTF-8"):
        read_dialogs([binary])
    with pytest.raises(DialogError, match=r"cannot read dialog file .*missing\.yml"):
        read_dialogs([tmp_path / "missing.yml"])
    proc = run_cli(tmp_path / "home", "import-dialog", "a.yml", "--output", "x", "--corpus")
    assert proc.returncode == 2 and "not both" in proc.stderr
