"""``hydra-joblib status SWEEP_DIR`` and ``hydra-joblib report SWEEP_DIR``: a sweep seen from its dir alone.

    status  ─▶ read_sweep (_sweepdir) ─▶ the table (_status_view), or --json, or --watch
    report  ─▶ read_sweep (_sweepdir) ─▶ report.html (_html_report)

Also ``python -m hydra_plugins.hydra_joblib_launcher``. A sweep dir that cannot
be read is one message on stderr and exit code 2, as bad arguments are.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, TextIO, Tuple

if TYPE_CHECKING:
    from ._sweepdir import Sweep

USAGE_ERROR = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.watch and args.json:
        parser.error("--watch and --json go apart: --json prints the status once")
    if args.command == "status" and args.interval <= 0:
        parser.error(f"--interval {args.interval:g}: give a number of seconds above 0")
    from ._errors import LauncherError

    try:
        if args.command == "status":
            return _status(args.sweep_dir, watch=args.watch, as_json=args.json, every=args.interval)
        return _report(args.sweep_dir, output=args.output)
    except LauncherError as error:
        print(f"hydra-joblib {args.command}: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hydra-joblib",
        description="See a sweep of hydra-joblib-launcher from its sweep dir, from any host that mounts it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status",
        help="the sweep as it stands: counts, running and failed jobs, ETA, launcher alive or not",
    )
    status.add_argument(
        "sweep_dir", type=Path, metavar="SWEEP_DIR", help="the multirun's hydra.sweep.dir"
    )
    status.add_argument("--watch", action="store_true", help="refresh until the sweep ends")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (2)")
    status.add_argument("--json", action="store_true", help="print the machine-readable form")
    report = commands.add_parser(
        "report", help="write report.html into the sweep dir: timeline, failures, results"
    )
    report.add_argument(
        "sweep_dir", type=Path, metavar="SWEEP_DIR", help="the multirun's hydra.sweep.dir"
    )
    report.add_argument("-o", "--output", type=Path, default=None, help="write here instead")
    return parser


def _status(sweep_dir: Path, *, watch: bool, as_json: bool, every: float) -> int:
    from ._status_view import render
    from ._sweepdir import read_sweep

    sweep = read_sweep(sweep_dir)
    if as_json:
        json.dump(sweep.as_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not watch:
        _print(render(sweep))
        return 0
    out = sys.stdout
    in_place = out.isatty()
    shown: Optional[Tuple[object, ...]] = None
    while True:
        key = _what_changed(sweep)
        if in_place:
            out.write("\x1b[H\x1b[2J")  # home, clear: the table is drawn again in place
            _print(render(sweep), out)
        elif key != shown:  # a log: a new table only when something changed
            _print([*render(sweep), ""], out)
        shown = key
        if sweep.state != "running":
            return 0
        time.sleep(every)
        sweep = read_sweep(sweep_dir)


def _what_changed(sweep: "Sweep") -> Tuple[object, ...]:
    status = sweep.status or {}
    running = tuple(job.get("num") for job in status.get("running") or [])
    counts = tuple(sorted((status.get("counts") or {}).items()))
    return (sweep.state, counts, running, len(sweep.records))


def _print(lines: List[str], out: Optional[TextIO] = None) -> None:
    out = out or sys.stdout
    out.write("\n".join(lines) + "\n")
    out.flush()


def _report(sweep_dir: Path, *, output: Optional[Path]) -> int:
    from ._html_report import write_report
    from ._sweepdir import read_sweep

    path = write_report(read_sweep(sweep_dir), output=output)
    print(f"Wrote {path}")
    return 0
