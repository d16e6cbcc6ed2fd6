"""`chorus completion bash|zsh|fish`: the shell completion script, from typer's own machinery.

The script calls `chorus` back with `_CHORUS_COMPLETE` set; typer (its vendored click) answers
with the commands, options and values that fit (context names for `chorus context use`).
typer's completion classes are registered in `chorus.server.cli.main` before the app runs.
"""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from typer._completion_shared import get_completion_script  # what `--show-completion` prints

PROG = "chorus"
COMPLETE_VAR = "_CHORUS_COMPLETE"


class Shell(enum.StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the completion script for SHELL. bash: `source <(chorus completion bash)` in ~/.bashrc;
    zsh: `chorus completion zsh > "${fpath[1]}/_chorus"`; fish:
    `chorus completion fish > ~/.config/fish/completions/chorus.fish`."""
    print(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value))
