"""Fault report: the long run of the kill -9 campaign in tests/fault_campaign.py.

    .venv/bin/python -m bench.faults [--kills 100] [--seed 7] [--json]   (or: python bench/faults.py)

A real daemon (the tests' tiny model) is killed with SIGKILL `--kills` times, spread over four
phases (training, checkpoint writing, ingest, tweet writing), from outside at a random delay
after the phase starts or at a crash point inside it; some cycles also meet NaN losses, a
locked database, a full disk or a garbage checkpoint first, and some a `tweetgen append` over
a file size limit, which must fail and leave the corpus byte-identical. After every kill the
database must pass PRAGMA integrity_check, the newest checkpoint must load, the ingests must run
on from byte 0 without a gap or an overlap, and every tweet seen before the kill must still be
there; after every restart no run of a dead daemon may still say 'running'. A last daemon then
ingests everything. Prints faults by kind, restarts, lines appended vs ingested, tweets before
vs after, failed appends, checks passed; data lost must be 0. About 6 s per kill on a 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0:0] = [str(REPO), str(REPO / "tests")]

from fault_campaign import Report, run_campaign  # noqa: E402


def table(report: Report, seed: int) -> str:
    lost_lines = report.lines_appended - report.lines_ingested
    lines = [f"kill -9 campaign, seed {seed}: {sum(report.kills.values())} kills in "
             f"{report.seconds:.0f} s", "", "faults injected, by kind:"]
    for kind, count in sorted(report.kills.items()):
        lines.append(f"  {kind:<40} {count:>5}")
    for kind, count in sorted(report.faults.items()):
        lines.append(f"  {kind + ' (then killed)':<40} {count:>5}")
    lines += [
        f"  {'crash points not reached (killed late)':<40} {report.fallbacks:>5}",
        "",
        f"daemon restarts                           {report.restarts:>7}",
        f"complete lines appended (incl. 200 first) {report.lines_appended:>7}",
        f"lines ingested (kept + rejected)          {report.lines_ingested:>7}",
        f"lines lost or ingested twice              {abs(lost_lines):>7}",
        f"tweets seen before the last kill          {report.samples_before:>7}",
        f"tweets at the end                         {report.samples_after:>7}",
        f"tweets lost                               {report.samples_lost:>7}",
        f"appends failed under a file size limit    {report.failed_appends:>7}",
        f"  corpus byte-identical after them        {report.failed_appends_intact:>7}",
        f"integrity and consistency checks passed   {report.checks_passed:>7}",
        f"checks failed                             {len(report.failures):>7}",
    ]
    lines += [f"  FAILED: {failure}" for failure in report.failures]
    torn = report.failed_appends - report.failed_appends_intact
    lines.append(f"data lost: {abs(lost_lines) + report.samples_lost + torn} (target 0)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        report = run_campaign(Path(tmp), args.seed, args.kills)
    if args.json:
        print(json.dumps(dict(dataclasses.asdict(report), seed=args.seed), indent=2))
    else:
        print(table(report, args.seed))
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
