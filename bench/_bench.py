"""What every bench script shares: the `--smoke` flag and the load-average line.

`--smoke` runs a script with sizes small enough for CI (tests/bench/test_bench_smoke.py runs
every script so, at HEAD, so a config or API change can never break one unnoticed); its
figures prove the script runs, not how fast anything is. The load average is printed at the
start and the end of every run: the machine is shared, and a figure means little without it.
"""

from __future__ import annotations

import argparse
import atexit
import os
from typing import Any


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def parse(parser: argparse.ArgumentParser, smoke: dict[str, Any]) -> argparse.Namespace:
    """Parse the command line; with `--smoke`, the values in `smoke` replace the arguments'."""
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny sizes for a CI smoke run ({', '.join(f'{k}={v}' for k, v in smoke.items())})")
    args = parser.parse_args()
    if args.smoke:
        unknown = set(smoke) - set(vars(args))
        assert not unknown, f"smoke sizes for arguments the parser lacks: {sorted(unknown)}"
        for name, value in smoke.items():
            setattr(args, name, value)
    print(f"{'smoke run, ' if args.smoke else ''}{load_average()}", flush=True)
    atexit.register(lambda: print(f"end: {load_average()}", flush=True))
    return args
