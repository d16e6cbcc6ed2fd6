"""Client contexts, kubectl-style: named sets of connection settings in one TOML file.

The file is `$XDG_CONFIG_HOME/chorus/config.toml` (default `~/.config/chorus/config.toml`):

    current-context = "prod"

    [contexts.prod]
    server = "chorus.example.com:7355"
    ca = "company-ca.pem"              # relative paths are relative to this file
    client_cert = "me.pem"
    client_key = "me.key"
    token_file = "~/.config/chorus/prod.token"

    [contexts.prod.oidc]               # for `chorus login` (device flow)
    issuer = "https://idp.example.com"
    client_id = "chorus-cli"
    audience = "chorus"

Invariants:

* Precedence for every setting: flag > environment variable > context > built-in default. The
  context fills click's `default_map`, which click consults after the command line and the
  environment; `token_file` is left out when `CHORUS_TOKEN_FILE` is set, because the CLI
  reads that variable itself (cli/_common.py).
* A context holds paths, never secrets: the token stays in its file (mode 0600), and
  `context show` prints the path. Unknown keys are refused with the valid ones named, so a
  typo does not silently fall back to a default server.
* The selected context is `--context NAME`, else `$CHORUS_CONTEXT`, else `current-context`;
  no file and no selection means no context (every command works as without this module).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from chorus.server.cli._common import TOKEN_FILE_ENV, ExitCode, console, fail

CONTEXT_ENV = "CHORUS_CONTEXT"
_CURRENT = "current-context"
_CURRENT_LINE = re.compile(r"^current-context\s*=.*$", re.M)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True, slots=True)
class Oidc:
    """What `chorus login` needs to sign in with the device flow (the server's [oidc] settings)."""

    issuer: str
    client_id: str
    audience: str


@dataclass(frozen=True, slots=True)
class Context:
    name: str
    server: str | None = None
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token_file: Path | None = None
    oidc: Oidc | None = None

    def settings(self) -> dict[str, Any]:
        """Command parameter name -> value, for every setting this context has."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if f.name not in ("name", "oidc") and getattr(self, f.name) is not None}
        if self.oidc is not None:  # `chorus login`'s options
            out |= {"oidc_issuer": self.oidc.issuer, "oidc_client_id": self.oidc.client_id,
                    "oidc_audience": self.oidc.audience}
        return out


_PATH_KEYS = ("ca", "client_cert", "client_key", "token_file")
_KEYS = ("server", *_PATH_KEYS, "oidc")
_OIDC_KEYS = ("issuer", "client_id", "audience")


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chorus" / "config.toml"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    path: Path
    current: str | None
    contexts: dict[str, Context]


def load(path: Path | None = None) -> ClientConfig:
    """The client config file (none: no contexts); typer.Exit(2) naming the file and key on errors."""
    path = path or config_path()
    if not path.exists():
        return ClientConfig(path, None, {})
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"{path}: cannot read the client config: {exc}", ExitCode.USAGE) from None
    unknown = set(raw) - {_CURRENT, "contexts"}
    if unknown:
        raise fail(f"{path}: unknown key {sorted(unknown)[0]!r} (valid: {_CURRENT}, contexts)", ExitCode.USAGE)
    current = raw.get(_CURRENT)
    if current is not None and not isinstance(current, str):
        raise fail(f"{path}: {_CURRENT} must be a context name in quotes", ExitCode.USAGE)
    tables = raw.get("contexts", {})
    if not isinstance(tables, dict):
        raise fail(f"{path}: contexts must be tables named contexts.NAME", ExitCode.USAGE)
    return ClientConfig(path, current, {name: _context(path, name, table) for name, table in tables.items()})


def _context(path: Path, name: str, table: object) -> Context:
    where = f"{path}: context {name!r}"
    if not _NAME.fullmatch(name):
        raise fail(f"{where}: a context name is letters, digits, '.', '_' or '-' (at most 63)", ExitCode.USAGE)
    if not isinstance(table, dict):
        raise fail(f"{where} must be a table", ExitCode.USAGE)
    unknown = set(table) - set(_KEYS)
    if unknown:
        raise fail(f"{where}: unknown key {sorted(unknown)[0]!r} (valid: {', '.join(_KEYS)})", ExitCode.USAGE)
    values: dict[str, Any] = {}
    for key in ("server", *_PATH_KEYS):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise fail(f"{where}: {key} must be a non-empty string", ExitCode.USAGE)
        values[key] = (path.parent / Path(value).expanduser()) if key in _PATH_KEYS else value
    oidc = table.get("oidc")
    if oidc is not None:
        if not isinstance(oidc, dict) or set(oidc) != set(_OIDC_KEYS) or not all(
                isinstance(v, str) and v for v in oidc.values()):
            raise fail(f"{where}: oidc needs exactly {', '.join(_OIDC_KEYS)} (non-empty strings)", ExitCode.USAGE)
        values["oidc"] = Oidc(**oidc)
    return Context(name, **values)


def selected(name: str | None) -> Context | None:
    """The context named by --context, $CHORUS_CONTEXT or current-context; None without one."""
    config = load()
    chosen = name or os.environ.get(CONTEXT_ENV) or config.current
    if chosen is None:
        return None
    if chosen not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        source = ("--context" if name else CONTEXT_ENV if os.environ.get(CONTEXT_ENV) else _CURRENT)
        raise fail(f"no context {chosen!r} ({source}) in {config.path}; contexts: {known}", ExitCode.USAGE)
    return config.contexts[chosen]


def default_map(command: Any, context: Context) -> dict[str, Any]:
    """click's default_map for `command` and every subcommand: each parameter the context sets."""
    settings = context.settings()
    if os.environ.get(TOKEN_FILE_ENV):
        settings.pop("token_file", None)  # the variable beats the context (read in cli/_common.py)
    out: dict[str, Any] = {p.name: str(settings[p.name]) for p in command.params if p.name in settings}
    for name, sub in getattr(command, "commands", {}).items():
        out[name] = default_map(sub, context)
    return out


ContextOpt = Annotated[str | None, typer.Option(
    "--context", envvar=CONTEXT_ENV, show_default=False,
    help="Client context from ~/.config/chorus/config.toml ($XDG_CONFIG_HOME): server, CA, client "
         "certificate, token file. Default: its current-context.")]

context_app = typer.Typer(help="Client contexts: named server, TLS and token settings (kubectl-style).",
                          no_args_is_help=True)


def _names(incomplete: str) -> list[str]:
    try:
        return [n for n in sorted(load().contexts) if n.startswith(incomplete)]
    except typer.Exit:
        return []


@context_app.command("list")
def list_contexts() -> None:
    """List the contexts; * marks the current one."""
    config = load()
    if not config.contexts:
        console.print(f"no contexts in {config.path}", highlight=False, soft_wrap=True)
        return
    for name, context in sorted(config.contexts.items()):
        mark = "*" if name == config.current else " "
        console.print(f"{mark} {name:<16} {context.server or '(default server)'}", highlight=False,
                      soft_wrap=True)


@context_app.command("use")
def use(name: Annotated[str, typer.Argument(help="The context to make current.", autocompletion=_names)]) -> None:
    """Make NAME the current context (rewrites current-context in the file, nothing else)."""
    config = load()
    if name not in config.contexts:
        raise fail(f"no context {name!r} in {config.path}; contexts: {', '.join(sorted(config.contexts)) or 'none'}",
                   ExitCode.USAGE)
    text = config.path.read_text(encoding="utf-8")
    line = f'{_CURRENT} = "{name}"'
    text = _CURRENT_LINE.sub(line, text, count=1) if _CURRENT_LINE.search(text) else f"{line}\n{text}"
    config.path.write_text(text, encoding="utf-8")
    console.print(f"current context: {name}", highlight=False)


@context_app.command("show")
def show(ctx: typer.Context, name: Annotated[str | None, typer.Argument(
        help="Default: the selected context.", autocompletion=_names)] = None) -> None:
    """Print a context's settings (the token file's path, never a token)."""
    context = selected(name or ctx.find_root().params.get("context"))
    if context is None:
        raise fail(f"no context selected: `chorus context use NAME`, --context or {CONTEXT_ENV} "
                   f"({config_path()})", ExitCode.USAGE)
    console.print(f"context: {context.name}", highlight=False, soft_wrap=True)
    for key, value in context.settings().items():
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True)
