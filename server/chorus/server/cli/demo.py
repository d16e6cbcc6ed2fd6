"""`chorus demo`: the whole product in one command, on a throwaway SQLite data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(seed: Annotated[int, typer.Option(help="Seed of the simulated company.")] = 7,
         keep: Annotated[Path | None, typer.Option(help="Keep the data directory here instead of a "
                                                   "temporary one (new, empty, or an earlier demo's, which is "
                                                   "replaced), with an analyst token for the dashboard in "
                                                   "DIR/analyst.token.")] = None) -> None:
    """Run the whole product once on a throwaway SQLite store: server, roster, simulated AI tools, report, audit."""
    from chorus.server import demo as demo_module
    from chorus.server.cli._common import ExitCode, fail

    try:
        demo_module.run(seed=seed, keep=keep)
    except ValueError as exc:  # a --keep directory that is not the demo's to fill
        raise fail(str(exc), ExitCode.USAGE) from None
