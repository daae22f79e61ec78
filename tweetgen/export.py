"""Reviewed tweets out of the database: `tweetgen export` as CSV, JSON or plain text."""

from __future__ import annotations

import csv
import io
import json

FIELDS = ("id", "text", "seed", "status", "score", "novelty", "fluency", "temperature",
          "checkpoint_step", "source", "created", "reviewed")
FORMATS = ("csv", "json", "txt")


def export_text(rows: list[dict], fmt: str) -> str:
    """The rows in `fmt`: csv (a header, then FIELDS), json (a list of objects with FIELDS), or
    txt (one tweet per line, nothing else: ready to paste or pipe)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    picked = [{name: row.get(name) for name in FIELDS} for row in rows]
    if fmt == "json":
        return json.dumps(picked, indent=2, ensure_ascii=False) + "\n"
    if fmt == "txt":
        return "".join(" ".join(row["text"].splitlines()) + "\n" for row in picked)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(picked)
    return out.getvalue()
