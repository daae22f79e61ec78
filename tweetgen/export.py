"""Reviewed tweets out of the database: `tweetgen export` as CSV, JSON or plain text."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .corpus import terminal_safe

FIELDS = ("id", "text", "seed", "status", "score", "novelty", "fluency", "temperature",
          "checkpoint_step", "source", "created", "reviewed")
FORMATS = ("csv", "json", "txt")
FORMULA_STARTS = ("=", "+", "-", "@")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: control characters escaped as \\xNN, and one starting
    like a formula (= + - @) behind a ' (the usual defence against CSV formula injection: a tweet
    is untrusted text). `tweetgen tweets --format csv` and `tweetgen export` both use it."""
    if not isinstance(value, str):
        return value
    value = terminal_safe(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def export_text(rows: list[dict], fmt: str) -> str:
    """The rows in `fmt`: csv (a header, then FIELDS), json (a list of objects with FIELDS), or
    txt (one tweet per line, nothing else: ready to paste or pipe; control characters, which
    cleaned corpus lines never hold, shown as \\xNN)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    picked = [{name: row.get(name) for name in FIELDS} for row in rows]
    if fmt == "json":
        return json.dumps(picked, indent=2, ensure_ascii=False) + "\n"
    if fmt == "txt":
        return "".join(_line(row["text"]) + "\n" for row in picked)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in picked)
    return out.getvalue()


def _line(text: str) -> str:
    return terminal_safe(" ".join(text.splitlines()))
