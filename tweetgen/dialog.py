"""Dialog corpora: message and reply pairs for context training (`tweetgen import-dialog`).

Two formats are read:

- ChatterBot corpus YAML (`.yml` / `.yaml`, the `chatterbot-corpus` package's data files): a
  mapping whose `conversations:` is a list of conversations, each a list of consecutive
  statements. A conversation of n statements gives n - 1 pairs: each statement answers the one
  before it.
- Plain text (any other name): one `message<TAB>reply` per line; a line without a tab is skipped
  and counted.

Each side is cleaned like a corpus line (tabs, newlines and control characters become spaces),
and a pair is written in the corpus format, `message<TAB>reply` (tweetgen.context's `pairs`
mode). Every file is read before anything is written, so a bad file writes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import PAIR_SEP, CorpusError, clean_text

YAML_SUFFIXES = (".yml", ".yaml")


class DialogError(CorpusError):
    """A dialog file that cannot be read; the message names it and says what to do."""


@dataclass
class Dialog:
    """Pairs read from dialog files, with what was skipped and why."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    files: int = 0

    def lines(self) -> list[str]:
        """The pairs in the corpus format."""
        return [f"{message}{PAIR_SEP}{reply}" for message, reply in self.pairs]


def read_dialogs(paths: Iterable[Path]) -> Dialog:
    """The pairs of every file, in order; DialogError at the first file that cannot be read."""
    dialog = Dialog()
    for path in paths:
        if Path(path).suffix.lower() in YAML_SUFFIXES:
            conversations = chatterbot_conversations(path, dialog.skipped)
        else:
            conversations = tsv_conversations(path, dialog.skipped)
        for statements in conversations:
            add_conversation(dialog, statements)
        dialog.files += 1
    return dialog


def add_conversation(dialog: Dialog, statements: list[str]) -> None:
    """Each statement after the first is a reply to the one before it; a pair with an empty
    side (after cleaning) is skipped."""
    cleaned = [clean_text(text) for text in statements]
    for message, reply in zip(cleaned, cleaned[1:]):
        if message and reply:
            dialog.pairs.append((message, reply))
        else:
            dialog.skipped["empty statement"] += 1


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DialogError(f"dialog file {path} is not UTF-8 text (byte {exc.start}); convert it "
                          "to UTF-8 or leave it out") from None
    except OSError as exc:
        raise DialogError(f"cannot read dialog file {path}: {exc.strerror or exc}") from None


def chatterbot_conversations(path: Path, skipped: Counter) -> list[list[str]]:
    """The conversations of a ChatterBot corpus YAML file (statements as text). An entry that is
    not a list is skipped and counted (chatterbot-corpus 1.3.3's own trivia.yml has one)."""
    import yaml

    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise DialogError(f"dialog file {path} is not valid YAML{where}: {problem}; fix it or "
                          "leave it out") from None
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, list):
        raise DialogError(f"dialog file {path} has no `conversations:` list (the ChatterBot corpus "
                          "format); give a ChatterBot YAML file, or message<TAB>reply lines in a "
                          ".txt or .tsv file")
    found = []
    for conversation in conversations:
        if not isinstance(conversation, list):
            skipped["conversation not a list"] += 1
            continue
        # YAML reads `- yes` or `- 42` as a boolean or a number: they are statements too.
        found.append([_statement(item) for item in conversation])
    return found


def _statement(item: object) -> str:
    if item is None:
        return ""
    if isinstance(item, bool):
        return "yes" if item else "no"
    return str(item)


def tsv_conversations(path: Path, skipped: Counter) -> list[list[str]]:
    """`message<TAB>reply` lines as two-statement conversations; lines without a tab are skipped.
    A reply may itself hold tabs: they are spaces after cleaning."""
    found = []
    for line in _read_text(path).splitlines():
        message, tab, reply = line.partition(PAIR_SEP)
        if not tab:
            if line.strip():
                skipped["no tab"] += 1
            continue
        found.append([message, reply])
    return found
