"""`chorus demo`: the whole product in one command, on a throwaway SQLite data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(seed: Annotated[int, typer.Option(help="Seed of the simulated company.")] = 7,
         keep: Annotated[Path | None, typer.Option(help="Keep the data directory here instead of a "
                                                   "temporary one.")] = None) -> None:
    """Start a real server, import a generated roster, run simulated AI tools through the SDK,
    close the window and show the team report and the verified ledger."""
    from chorus.server import demo as demo_module

    demo_module.run(seed=seed, keep=keep)
