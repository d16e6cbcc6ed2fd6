"""Server configuration from a TOML file, validated up front with errors that name the value.

The privacy-relevant part (`chorus.server.model.policy.Policy`) is frozen into each window when it
opens, so a change here takes effect from the next window only.

Every scalar key is one `Setting` in `SETTINGS` (its dotted path, its rule, its default and the
comment `chorus default-config` prints beside it): the known keys, the parsing, the error
messages, the defaults and the key lines of `DEFAULT_TOML` are derived from that one table, so
a new key is one line there. Arrays of tables (`[[metrics]]`, `[[privacy.release_plan]]`,
`[[otlp.metrics]]`) have their own parsers and register their keys in `TABLE_KEYS`.

Every key must be known: a misspelt privacy setting (`min_team_sise = 10`) or section
(`[window]`) would otherwise be ignored and its built-in value silently used, so the file is
refused, naming the key and the nearest valid one.

String values may name environment variables as `${env:NAME}` (the OpenTelemetry Collector's
convention; `$$` is a literal `$`), so a secret such as a database password need not be in the
file. A variable that is not set is an error naming the key and the variable, never a value.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chorus.client.limits import MAX_BATCH_CONTRIBUTIONS, MAX_NAME_CHARS
from chorus.server.model import hierarchy, otlp_mapping
from chorus.server.model import oidc as oidc_config
from chorus.server.model.calendar import WindowLength
from chorus.server.model.oidc import OidcConfig, parse_oidc
from chorus.server.model.otlp_mapping import parse_otlp
from chorus.server.model.policy import IMPRECISE_ADOPTION_POINTS, MAX_METRICS, MetricPolicy, PlanEntry, Policy
from chorus.server.model.statistics import NOISY as NOISY_STATISTICS
from chorus.server.model.statistics import NOISY_PARTS
from chorus.server.model.statistics import REQUESTABLE as STATISTICS
from chorus.server.privacy.epsilon import ZERO, Epsilon, Loss, Rho
from chorus.server.privacy.mechanisms import GAUSSIAN, LAPLACE, UNITS

_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: Where `chorus serve` listens, and where every client looks, unless told otherwise.
DEFAULT_LISTEN = "127.0.0.1:7355"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, the value and the rule."""


# -- rules: each turns a raw TOML value into its parsed value, or raises naming the key --------

Rule = Callable[[object, str], Any]


def integer(low: int, high: int) -> Rule:
    def rule(value: object, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{key} = {value!r}: must be an integer in [{low}, {high}]")
        return value
    return rule


def positive(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ConfigError(f"{key} = {value!r}: must be a number greater than 0")
    return float(value)


def positive_epsilon(value: object, key: str) -> Epsilon:
    return _epsilon(value, key, positive=True)


def positive_rho(value: object, key: str) -> Loss:
    return _amount(Rho, value, key, positive=True)


def text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} = {value!r}: must be a string")
    return value


def choice(*options: str, fold: Callable[[str], str] = str) -> Rule:
    def rule(value: object, key: str) -> str:
        folded = fold(value) if isinstance(value, str) else None
        if folded not in options:
            raise ConfigError(f"{key} = {value!r}: must be {' or '.join(repr(o) for o in options)}")
        return folded
    return rule


def duration(value: object, key: str) -> int:
    return parse_duration(value, key)


@dataclass(frozen=True, slots=True)
class Setting:
    """One scalar key: `path` (dotted, e.g. "privacy.min_team_size"), the `rule` its value
    must pass, its `default` as a TOML value, and the `comment` `chorus default-config` writes
    beside it."""

    path: str
    rule: Rule
    default: Any
    comment: str = ""

    @property
    def table(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]


SETTINGS: tuple[Setting, ...] = (
    Setting("server.listen", text, DEFAULT_LISTEN),
    Setting("server.database", text, "", "default: SQLite in the data directory"),
    Setting("server.close_interval_seconds", positive, 30.0, "how often the window closer runs"),
    Setting("windows.length", choice("day", "week"), "week", '"week" (ISO week, UTC) or "day" (UTC)'),
    Setting("windows.grace", duration, "6h", "contributions may arrive this long after a window ends"),
    # --- The mechanism and zCDP (issue 20): the Gaussian's rho amounts; the epsilon ones below
    # are the Laplace's (its built-in values from before the Gaussian).
    Setting("privacy.mechanism", choice(GAUSSIAN, LAPLACE), GAUSSIAN),
    Setting("privacy.rho_per_window", positive_rho, "0.138",
            "budget per team-window, including what the org and company releases above it cost"),
    *(Setting(f"privacy.default_rho.{s}", positive_rho, "0.01") for s in NOISY_STATISTICS),
    Setting("privacy.imprecise_adoption_points", integer(1, 100), IMPRECISE_ADOPTION_POINTS,
            "a team's weekly adoption wider than +- this is flagged: too few people"),
    # ---
    Setting("privacy.epsilon_per_window", positive_epsilon, "3"),
    Setting("privacy.min_team_size", integer(1, 1_000_000), 5, "k: smaller teams are never released on their own"),
    Setting("privacy.retention_windows", integer(1, 100_000), 52,
            "windows older than this can no longer be released"),
    *(Setting(f"privacy.default_epsilon.{s}", positive_epsilon, "0.5") for s in NOISY_STATISTICS),
    # The floors are what the SDK sends at most (chorus.client.limits: contributions, about
    # 1 MiB, name length): a lower limit would refuse, forever, batches the SDK cannot make smaller.
    Setting("limits.max_message_bytes", integer(2 * 1024 * 1024, 64 * 1024 * 1024), 4 * 1024 * 1024),
    Setting("limits.max_batch_contributions", integer(MAX_BATCH_CONTRIBUTIONS, 1_000_000), 10_000),
    Setting("limits.max_string_length", integer(MAX_NAME_CHARS, 4096), MAX_NAME_CHARS),
    Setting("limits.ingest_rate_per_token", positive, 2_000_000.0, "contributions per second, token bucket"),
    Setting("limits.ingest_burst_per_token", integer(1, 10**12), 4_000_000),
    Setting("limits.rpc_deadline_seconds", positive, 30.0),
    Setting("store.sqlite_synchronous", choice("FULL", "NORMAL", "EXTRA", fold=str.upper), "FULL"),
)
_BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}


def default(path: str) -> Any:
    """The parsed default of one setting (the one source of every built-in value)."""
    setting = _BY_PATH[path]
    return setting.rule(setting.default, path)


# --- Plan levels (issue 20) ----------------------------------------------------------------------
#: [[privacy.release_plan]] keys of the Gaussian and of levels.
PLAN_LEVEL_KEYS = frozenset({"rho", "level"})
#: The levels a plan entry may name: every team, every org node, or the company.
PLAN_LEVELS = (hierarchy.TEAM, hierarchy.ORG, hierarchy.ROOT)
# ---------------------------------------------------------------------------------------------

#: Keys of the arrays of tables and other structured entries, by the dotted path of their table
#: ("" is the top level): everything a file may hold beyond SETTINGS.
TABLE_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"metrics", "otlp", "oidc"}),
    "privacy": frozenset({"release_plan"}),
    "privacy.release_plan": frozenset({"statistic", "metric", "epsilon", "denominator"}) | PLAN_LEVEL_KEYS,
    "metrics": frozenset({"name", "description", "max_per_user", "histogram_edges"}),
    "otlp": otlp_mapping.KNOWN_KEYS,
    "otlp.metrics": otlp_mapping.KNOWN_MAPPING_KEYS,  # `attributes` is a free table: attribute -> values
    # [oidc]: single sign-on, its own small block (model/oidc.py).
    "oidc": oidc_config.KNOWN_KEYS,
    "oidc.roles": oidc_config.KNOWN_ROLE_KEYS,
}


def _known_keys() -> dict[str, frozenset[str]]:
    known: dict[str, set[str]] = {path: set(keys) for path, keys in TABLE_KEYS.items()}
    for setting in SETTINGS:
        known.setdefault(setting.table, set()).add(setting.key)
        # every enclosing table is a key of its parent
        parts = setting.table.split(".")
        for depth in range(len(parts)):
            parent = ".".join(parts[:depth])
            known.setdefault(parent, set()).add(parts[depth])
    return {path: frozenset(keys) for path, keys in known.items()}


#: Every key a config file may hold, by the dotted path of its table ("" is the top level),
#: derived from SETTINGS and TABLE_KEYS. A table's own name is a key of its parent; an array of
#: tables ([[metrics]]) is checked entry by entry against its path; anything else is refused.
KNOWN_KEYS: dict[str, frozenset[str]] = _known_keys()


@dataclass(frozen=True, slots=True)
class Limits:
    """Hostile-input bounds, enforced before anything touches the store (defaults: SETTINGS)."""

    max_message_bytes: int = default("limits.max_message_bytes")
    max_batch_contributions: int = default("limits.max_batch_contributions")
    max_string_length: int = default("limits.max_string_length")
    ingest_rate_per_token: float = default("limits.ingest_rate_per_token")  # contributions/s, token bucket
    ingest_burst_per_token: int = default("limits.ingest_burst_per_token")
    rpc_deadline_seconds: float = default("limits.rpc_deadline_seconds")


@dataclass(frozen=True, slots=True)
class Config:
    policy: Policy
    limits: Limits = field(default_factory=Limits)
    listen: str = DEFAULT_LISTEN
    database: str = ""  # empty: SQLite file in the data directory
    sqlite_synchronous: str = default("store.sqlite_synchronous")
    close_interval_seconds: float = default("server.close_interval_seconds")
    #: `[oidc]`: access tokens of an OpenID Connect issuer accepted besides `chorus_` tokens.
    oidc: OidcConfig | None = None


def check_keys(raw: dict[str, Any], path: str = "", shown: str = "") -> None:
    """Refuse any key not in KNOWN_KEYS, naming it and the nearest valid key.

    `path` is the table's entry in KNOWN_KEYS, `shown` its name in messages (with indexes
    into arrays of tables, e.g. metrics[2])."""
    known = KNOWN_KEYS[path]
    for key, value in raw.items():
        child = f"{path}.{key}" if path else key
        if key not in known:
            kind = "section" if isinstance(value, dict) else "key"
            raise ConfigError(f"unknown {kind} {_name(shown, key, isinstance(value, dict))}: "
                              f"{_nearest(key, path, shown)}")
        if child not in KNOWN_KEYS:
            continue
        where = f"{shown}.{key}" if shown else key
        if isinstance(value, dict):
            check_keys(value, child, where)
        elif isinstance(value, list):
            for i, entry in enumerate(value):
                if isinstance(entry, dict):
                    check_keys(entry, child, f"{where}[{i}]")


def _name(table: str, key: str, section: bool) -> str:
    dotted = f"{table}.{key}" if table else key
    return f"[{dotted}]" if section else dotted


def _nearest(key: str, path: str, shown: str) -> str:
    """The closest key of the same table, else the table where this key is valid."""
    close = difflib.get_close_matches(key, KNOWN_KEYS[path], n=1, cutoff=0.6)
    if close:
        section = (f"{path}.{close[0]}" if path else close[0]) in KNOWN_KEYS
        return f"did you mean {_name(shown, close[0], section)}?"
    elsewhere = sorted(p for p, keys in KNOWN_KEYS.items() if key in keys and p != path)
    if elsewhere:
        return f"did you mean {_name(elsewhere[0], key, False)}? It belongs in " + (
            f"[{elsewhere[0]}]" if elsewhere[0] else "the top level")
    table = f"[{shown}]" if shown else "the top level"
    return f"{table} takes {', '.join(sorted(KNOWN_KEYS[path]))}"


_DEFAULT_TEMPLATE = """\
# Chorus server configuration. Privacy settings are frozen into each window when it
# opens; changes apply from the next window.

[server]
@server.listen
# database = "postgresql://user@host/chorus"   # default: SQLite in the data directory

[windows]
# The privacy unit is one person's usage in one window. Weekly windows bound a person's
# privacy loss over any twelve months to 54 windows' worth (daily windows: 367).
@windows.length
@windows.grace

[privacy]
# Noise: OpenDP's discrete Gaussian, charged in zCDP rho, which adds up over releases and
# windows. 54 weeks x 0.138 = rho 7.452 a year per person, (epsilon 29.8, delta 1e-8) in
# the usual terms (`chorus privacy-statement` prints it). mechanism = "discrete_laplace"
# charges pure epsilon instead (epsilon_per_window, [privacy.default_epsilon], an entry's
# epsilon); each window keeps the mechanism it opened with.
@privacy.mechanism
@privacy.rho_per_window
@privacy.min_team_size
@privacy.retention_windows
@privacy.imprecise_adoption_points

[privacy.default_rho]  # per statistic of a request that names no amount; mean and adoption are post-processing
@privacy.default_rho.sum
@privacy.default_rho.count
@privacy.default_rho.histogram
@privacy.default_rho.active

# The release plan: what is published as soon as a window closes, once, so that reading the
# numbers never spends budget. Designed for leadership's questions (is adoption growing,
# where, how much is used, does it turn into work): the company and every org are released
# directly, which is precise, and every team of at least k people too, which for a small team
# only says something averaged over several weeks; the share of AI edits people accepted
# (a ratio: the sum of accepted edits over the sums of accepted and rejected) is an outcome;
# the company histograms of the summed metrics show whether their bounds bite (`chorus
# bounds`). A team's budget pays for its own releases and for those of every node above it:
# here 0.03 (team) + 0.041 (org) + 0.057 (company) = 0.128 of its 0.138, leaving 0.01 for
# questions nobody planned (`chorus report --release`). An entry's rho defaults to
# [privacy.default_rho] and applies to each noisy part (a mean is a sum and a count, a ratio
# the sums of its metric and of each metric of its denominator); level is "team" (the
# default), "org" (every org node) or "company". The end of `chorus default-config` lists
# the 95% intervals it gives.
[[privacy.release_plan]]
statistic = "adoption"
level = "company"
rho = "0.006"

[[privacy.release_plan]]
statistic = "sum"
metric = "ai.tokens"
level = "company"
rho = "0.04"

[[privacy.release_plan]]
statistic = "ratio"
metric = "ai.suggestions_accepted"
denominator = ["ai.suggestions_accepted", "ai.suggestions_rejected"]
level = "company"
rho = "0.004"

[[privacy.release_plan]]
statistic = "histogram"
metric = "ai.tokens"
level = "company"
rho = "0.001"

[[privacy.release_plan]]
statistic = "histogram"
metric = "ai.suggestions_accepted"
level = "company"
rho = "0.001"

[[privacy.release_plan]]
statistic = "histogram"
metric = "ai.suggestions_rejected"
level = "company"
rho = "0.001"

[[privacy.release_plan]]
statistic = "adoption"
level = "org"
rho = "0.02"

[[privacy.release_plan]]
statistic = "sum"
metric = "ai.tokens"
level = "org"
rho = "0.019"

[[privacy.release_plan]]
statistic = "ratio"
metric = "ai.suggestions_accepted"
denominator = ["ai.suggestions_accepted", "ai.suggestions_rejected"]
level = "org"
rho = "0.001"

[[privacy.release_plan]]
statistic = "adoption"
rho = "0.03"

# Bounds are per person and week. A sum's noise grows in proportion to its bound (the
# intervals listed above are at these bounds), so pick a bound near heavy-but-real weekly
# usage: anything above it is clamped and buys nothing, which is also what makes burning
# tokens pointless. The histogram edges of the metrics the plan sums halve from the bound
# down, the last edge being the bound itself: the company histogram then says how many people
# are at the bound and above which edge 95% of them stay (`chorus bounds`).
[[metrics]]
name = "ai.tokens"
description = "Tokens consumed by AI assistants"
max_per_user = 500000
histogram_edges = [1953, 3906, 7813, 15625, 31250, 62500, 125000, 250000, 500000]

[[metrics]]
name = "ai.requests"
description = "Requests sent to AI assistants"
max_per_user = 500
histogram_edges = [25, 100, 250, 400]

[[metrics]]
name = "ai.suggestions_accepted"
description = "AI suggestions accepted into code or documents"
max_per_user = 500
histogram_edges = [2, 4, 8, 16, 31, 63, 125, 250, 500]

[[metrics]]
name = "ai.tasks_completed"
description = "Tasks completed with AI assistance"
max_per_user = 50
histogram_edges = [2, 5, 15, 30]

# Outcome metrics: what the AI tools' own telemetry says was done with them (docs/otlp.md maps
# each tool's instruments here). Edits count a person's decision only, never a permission mode's.
[[metrics]]
name = "ai.suggestions_rejected"
description = "AI edits rejected by a person"
max_per_user = 500
histogram_edges = [2, 4, 8, 16, 31, 63, 125, 250, 500]

[[metrics]]
name = "ai.lines_added"
description = "Lines of code added by AI tools"
max_per_user = 20000
histogram_edges = [500, 2000, 5000, 10000]

[[metrics]]
name = "ai.lines_removed"
description = "Lines of code removed by AI tools"
max_per_user = 20000
histogram_edges = [500, 2000, 5000, 10000]

[[metrics]]
name = "ai.commits"
description = "Git commits made with AI tools"
max_per_user = 200
histogram_edges = [5, 20, 50, 100]

[[metrics]]
name = "ai.pull_requests"
description = "Pull requests opened with AI tools"
max_per_user = 50
histogram_edges = [1, 3, 10, 25]

[[metrics]]
name = "ai.active_seconds"
description = "Seconds of active use of AI tools"
max_per_user = 144000
histogram_edges = [3600, 18000, 36000, 72000]

[[metrics]]
name = "ai.sessions"
description = "AI tool sessions started"
max_per_user = 500
histogram_edges = [5, 20, 50, 150]

# OpenTelemetry (OTLP): uncomment the lines below (or run `chorus default-config --otlp`) to take
# usage from AI tools that export OpenTelemetry metrics (docs/otlp.md). Points of instruments
# mapped nowhere are ignored; everything but the identity and the mapped values is dropped at
# the door. Each tool is mapped through its own instruments only, once per signal.
# ai.tokens means the same for every tool: input tokens not read from a prompt cache, plus
# output tokens (reasoning included). Cache reads and writes are left out: they dwarf real
# usage and would hit the ai.tokens bound for everyone.
# [otlp]
# # Attributes naming the person, first present wins (data point, then resource); the value
# # must be the roster's user id, usually the work email. None of the tools sends it under
# # API-key use: set OTEL_RESOURCE_ATTRIBUTES="user.email=<roster id>" (docs/otlp.md).
# identity_attributes = ["user.email", "enduser.id"]
#
# # Claude Code (CLAUDE_CODE_ENABLE_TELEMETRY=1). Its input count excludes cache reads. It
# # exports no request counter: Claude Code teams have no ai.requests.
# [[otlp.metrics]]
# name = "claude_code.token.usage"
# metric = "ai.tokens"
# attributes = { type = ["input", "output"] }
#
# # Edits a person accepted or rejected at the prompt; `source = "config"` (a permission mode)
# # and hooks are not a person's decision.
# [[otlp.metrics]]
# name = "claude_code.code_edit_tool.decision"
# metric = "ai.suggestions_accepted"
# attributes = { decision = ["accept"], source = ["user_temporary", "user_permanent"] }
#
# [[otlp.metrics]]
# name = "claude_code.code_edit_tool.decision"
# metric = "ai.suggestions_rejected"
# attributes = { decision = ["reject"], source = ["user_reject"] }
#
# [[otlp.metrics]]
# name = "claude_code.lines_of_code.count"
# metric = "ai.lines_added"
# attributes = { type = ["added"] }
#
# [[otlp.metrics]]
# name = "claude_code.lines_of_code.count"
# metric = "ai.lines_removed"
# attributes = { type = ["removed"] }
#
# [[otlp.metrics]]
# name = "claude_code.commit.count"
# metric = "ai.commits"
#
# [[otlp.metrics]]
# name = "claude_code.pull_request.count"
# metric = "ai.pull_requests"
#
# [[otlp.metrics]]
# name = "claude_code.active_time.total"
# metric = "ai.active_seconds"
#
# [[otlp.metrics]]
# name = "claude_code.session.count"
# metric = "ai.sessions"
#
# # Gemini CLI (telemetry.enabled, target "local" with an OTLP endpoint). Its input count
# # includes cached tokens, subtracted here; its output excludes thoughts, added here. It also
# # exports the GenAI convention's gen_ai.client.token.usage: not mapped (it would count twice).
# [[otlp.metrics]]
# name = "gemini_cli.token.usage"
# metric = "ai.tokens"
# attributes = { type = ["input", "output", "thought"] }
#
# [[otlp.metrics]]
# name = "gemini_cli.token.usage"
# metric = "ai.tokens"
# attributes = { type = ["cache"] }
# subtract = true
#
# [[otlp.metrics]]
# name = "gemini_cli.api.request.count"
# metric = "ai.requests"
#
# # File edits decided at the prompt ("accept" once, "modify" in the editor); under --yolo or an
# # auto-edit mode Gemini CLI also reports "accept" (docs/otlp.md).
# [[otlp.metrics]]
# name = "gemini_cli.tool.call.count"
# metric = "ai.suggestions_accepted"
# attributes = { function_name = ["write_file", "replace"], decision = ["accept", "modify"] }
#
# [[otlp.metrics]]
# name = "gemini_cli.tool.call.count"
# metric = "ai.suggestions_rejected"
# attributes = { function_name = ["write_file", "replace"], decision = ["reject"] }
#
# [[otlp.metrics]]
# name = "gemini_cli.lines.changed"
# metric = "ai.lines_added"
# attributes = { type = ["added"] }
#
# [[otlp.metrics]]
# name = "gemini_cli.lines.changed"
# metric = "ai.lines_removed"
# attributes = { type = ["removed"] }
#
# [[otlp.metrics]]
# name = "gemini_cli.session.count"
# metric = "ai.sessions"
#
# # Codex ([otel] metrics_exporter in ~/.codex/config.toml). A histogram per turn by token_type:
# # "total" would count everything twice, "input" includes "cached_input" (subtracted here),
# # "output" includes "reasoning_output".
# [[otlp.metrics]]
# name = "codex.turn.token_usage"
# metric = "ai.tokens"
# attributes = { token_type = ["input", "output"] }
#
# [[otlp.metrics]]
# name = "codex.turn.token_usage"
# metric = "ai.tokens"
# attributes = { token_type = ["cached_input"] }
# subtract = true
#
# [[otlp.metrics]]
# name = "codex.api_request"
# metric = "ai.requests"
#
# [[otlp.metrics]]
# name = "codex.conversation.turn.count"
# metric = "ai.tasks_completed"
#
# # Another tool following the OpenTelemetry GenAI conventions (a histogram: its sum counts),
# # scoped to its service name so that no tool above is counted twice:
# # [[otlp.metrics]]
# # name = "gen_ai.client.token.usage"
# # metric = "ai.tokens"
# # attributes = { "gen_ai.token.type" = ["input", "output"] }
# # resource = { "service.name" = ["your-tool"] }
"""
def toml_value(value: Any) -> str:
    """A setting's default as TOML (strings quoted, numbers as written)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _render(template: str) -> str:
    """The template with each `@path` line replaced by that setting's line: `key = default`,
    then its comment, aligned."""
    def line(match: re.Match[str]) -> str:
        setting = _BY_PATH[match[1]]
        text = f"{setting.key} = {toml_value(setting.default)}"
        return f"{text:<26} # {setting.comment}" if setting.comment else text
    return re.sub(r"(?m)^@([\w.]+)$", line, template)


#: The built-in configuration `chorus default-config` prints: hand-written prose around key
#: lines rendered from SETTINGS, so its values are the defaults and cannot drift from them.
DEFAULT_TOML = _render(_DEFAULT_TEMPLATE)

#: The first line of the commented `[otlp]` block in DEFAULT_TOML.
OTLP_BLOCK_START = "# [otlp]\n"


def with_otlp_enabled(text: str) -> str:
    """A config text with its commented `[otlp]` block (from OTLP_BLOCK_START to the end) uncommented."""
    head, found, block = text.partition(OTLP_BLOCK_START)
    if not found:
        raise ConfigError("the config has no commented [otlp] block to enable")
    lines = (found + block).splitlines(keepends=True)
    # One level of comment comes off; "# # " lines stay comments (a commented template).
    return head + "".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines)
#: Where the [[metrics]] of DEFAULT_TOML begin (`chorus default-config` explains the plan above it).
METRICS_COMMENT = "# Bounds are per person and week."
#: The built-in release plan, for a file that plans nothing (the one structured default).
_DEFAULT_PLAN: list[dict[str, Any]] = tomllib.loads(DEFAULT_TOML)["privacy"]["release_plan"]


def load(path: Path | None) -> Config:
    """Read and validate a config file; None means the built-in defaults."""
    text = DEFAULT_TOML if path is None else _read(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'built-in config'}: {exc}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None


def parse(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded TOML document: known keys only, `${env:NAME}` expanded from `environ`
    (default: the process environment), each value within its rule."""
    check_keys(raw)
    raw = expand_env(raw, os.environ if environ is None else environ)
    value = _settings(raw)

    metrics = tuple(_metric(m, i) for i, m in enumerate(raw.get("metrics", [])))
    if not metrics:
        raise ConfigError("no [[metrics]] defined: at least one metric is required")
    if len(metrics) > MAX_METRICS:
        raise ConfigError(f"{len(metrics)} [[metrics]] defined; the limit is {MAX_METRICS}")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ConfigError(f"metric names must be unique, got {names}")

    privacy = _table(raw, "privacy")
    mechanism = value["privacy.mechanism"]
    unit = _unit_of(mechanism, privacy)
    name = unit.UNIT
    defaults = {s: value[f"privacy.default_{name}.{s}"] for s in NOISY_STATISTICS}
    budget = value[f"privacy.{name}_per_window"]
    for stat, eps in defaults.items():
        if eps > budget:
            raise ConfigError(f"privacy.default_{name}.{stat} = {eps} exceeds "
                              f"privacy.{name}_per_window = {budget}")
    # No plan in the file: the built-in one, for those of its metrics the file defines. Its
    # amounts are rho: under another mechanism its entries take that mechanism's defaults.
    plan_raw = privacy.get("release_plan", [
        {k: v for k, v in e.items() if mechanism == GAUSSIAN or k != "rho"}
        for e in _DEFAULT_PLAN if {e.get("metric", ""), *e.get("denominator", ())} <= {"", *names}])
    if not isinstance(plan_raw, list):
        raise ConfigError("privacy.release_plan must be an array of tables ([[privacy.release_plan]])")
    plan = _plan(plan_raw, metrics, defaults, budget, unit)
    try:
        otlp = parse_otlp(_table(raw, "otlp"), names)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    policy = Policy(WindowLength(value["windows.length"]), value["windows.grace"], metrics, budget, defaults,
                    value["privacy.min_team_size"], value["privacy.retention_windows"], release_plan=plan,
                    otlp=otlp, mechanism=mechanism,
                    imprecise_adoption_points=value["privacy.imprecise_adoption_points"])
    limits = Limits(**{s.key: value[s.path] for s in SETTINGS if s.table == "limits"})
    # [oidc]: single sign-on, its own small block (model/oidc.py).
    try:
        oidc = parse_oidc(_table(raw, "oidc"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Config(policy=policy, limits=limits, listen=value["server.listen"], database=value["server.database"],
                  sqlite_synchronous=value["store.sqlite_synchronous"],
                  close_interval_seconds=value["server.close_interval_seconds"], oidc=oidc)


def _settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Every setting's parsed value, by path: the file's where it has one, else the default."""
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        table: Any = raw
        parts = setting.table.split(".")
        for depth, part in enumerate(parts):
            table = _table(table, part, ".".join(parts[:depth + 1]))
        out[setting.path] = setting.rule(table.get(setting.key, setting.default), setting.path)
    return out


def expand_env(raw: Any, environ: Mapping[str, str], key: str = "") -> Any:
    """`raw` with `${env:NAME}` in every string value replaced by that variable (`$$` by `$`).
    An unset variable is refused naming the key and the variable (its value never appears)."""
    if isinstance(raw, dict):
        return {k: expand_env(v, environ, f"{key}.{k}" if key else k) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_env(v, environ, f"{key}[{i}]") for i, v in enumerate(raw)]
    if not isinstance(raw, str) or "$" not in raw:
        return raw

    def variable(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1]
        if name not in environ:
            raise ConfigError(f"{key} names the environment variable {name} (${{env:{name}}}), which is not set")
        return environ[name]
    return _ENV.sub(variable, raw)


def parse_duration(value: object, key: str) -> int:
    """Seconds from an int or a string like "90s", "30m", "2h", "1d"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _DURATION.match(value.strip())):
        return int(m[1]) * _UNIT_SECONDS[m[2]]
    raise ConfigError(f"{key} = {value!r}: expected seconds or a duration like '30m', '2h', '1d'")


def _table(raw: dict[str, Any], name: str, key: str | None = None) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key or name}] must be a table")
    return value


def _unit_of(mechanism: str, privacy: dict[str, Any]) -> type[Loss]:
    """The unit of privacy.mechanism; the other unit's keys are refused (an epsilon cap under a
    Gaussian would otherwise be ignored)."""
    unit = UNITS[mechanism]
    for other, other_unit in UNITS.items():
        name = other_unit.UNIT
        for key in (f"{name}_per_window", f"default_{name}"):
            if other != mechanism and key in privacy:
                raise ConfigError(f"privacy.{key} is an amount of {other}, but privacy.mechanism = "
                                  f"{mechanism!r} charges in {unit.UNIT}: write privacy."
                                  f"{key.replace(name, unit.UNIT)} instead")
    return unit


def _epsilon(value: object, key: str, *, positive: bool) -> Epsilon:
    eps = _amount(Epsilon, value, key, positive=positive)
    assert isinstance(eps, Epsilon)
    return eps


def _amount(unit: type[Loss], value: object, key: str, *, positive: bool) -> Loss:
    try:
        eps = unit.parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if positive and eps.micros == 0:
        raise ConfigError(f"{key} = {value!r}: must be greater than 0")
    return eps


def _metric(raw: object, index: int) -> MetricPolicy:
    where = f"metrics[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _METRIC_NAME.match(name) or len(name) > 64:
        raise ConfigError(f"{where}.name = {name!r}: lowercase dotted name like 'ai.tokens', "
                          "at most 64 characters")
    bound = integer(1, 10**12)(raw.get("max_per_user"), f"{where}.max_per_user ({name})")
    edges_raw = raw.get("histogram_edges", [])
    if not isinstance(edges_raw, list) or not all(isinstance(e, int) for e in edges_raw):
        raise ConfigError(f"{where}.histogram_edges ({name}) must be a list of integers")
    edges = tuple(edges_raw)
    if list(edges) != sorted(set(edges)) or any(e < 0 or e > bound for e in edges) or len(edges) > 64:
        raise ConfigError(f"{where}.histogram_edges ({name}) = {list(edges)}: must be strictly "
                          f"increasing, within [0, max_per_user={bound}], at most 64 edges")
    return MetricPolicy(name, str(raw.get("description", "")), bound, edges)


def _plan(raw: list[Any], metrics: tuple[MetricPolicy, ...], defaults: dict[str, Loss],
          budget: Loss, unit: type[Loss]) -> tuple[PlanEntry, ...]:
    """The release plan: each entry a known statistic of a known metric at a level; every noisy
    part of a level at one amount however many entries need it; the whole plan within the
    budget of a team-window (a team pays for its own entries and for those of every node above it,
    so each level's entries count once)."""
    names = {m.name for m in metrics}
    entries: list[PlanEntry] = []
    parts: dict[tuple[str, str, str], tuple[Loss, int]] = {}
    for i, item in enumerate(raw):
        where = f"privacy.release_plan[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table")
        stat = item.get("statistic")
        if stat not in STATISTICS:
            raise ConfigError(f"{where}.statistic = {stat!r}: must be one of {', '.join(STATISTICS)}")
        metric = item.get("metric", "")
        if stat == "adoption":
            if metric:
                raise ConfigError(f"{where}.metric = {metric!r}: adoption is team-level and takes no metric")
        elif metric not in names:
            raise ConfigError(f"{where}.metric = {metric!r}: must be one of the [[metrics]]: "
                              f"{', '.join(sorted(names))}")
        denominator = _denominator(item.get("denominator"), stat, metric, names, where)
        name = unit.UNIT
        other = next((u.UNIT for u in UNITS.values() if u is not unit and u.UNIT in item), None)
        if other is not None:
            raise ConfigError(f"{where}.{other}: this policy charges in {name}; write {where}.{name}")
        default = defaults["active" if stat == "adoption" else NOISY_PARTS[stat][0]]
        eps = _amount(unit, item[name], f"{where}.{name}", positive=True) if name in item else default
        level = item.get("level", hierarchy.TEAM)
        if level not in PLAN_LEVELS:
            raise ConfigError(f"{where}.level = {level!r}: must be one of {', '.join(PLAN_LEVELS)}")
        entry = PlanEntry(stat, metric, eps, level, denominator)
        if entry in entries:
            raise ConfigError(f"{where}: {stat} of {metric or 'activity'} is planned twice")
        for part in entry.noisy_parts():
            earlier = parts.setdefault((level, *part), (eps, i))
            if earlier[0] != eps:
                raise ConfigError(f"{where}: the {part[1]} of {part[0] or 'activity'} is planned at {name} "
                                  f"{eps} here and {earlier[0]} by privacy.release_plan[{earlier[1]}]; a "
                                  f"statistic is released once per level, at one {name}")
        entries.append(entry)
    cost = sum((eps for eps, _ in parts.values()), ZERO)
    if cost > budget:
        raise ConfigError(f"privacy.release_plan charges each team-window {cost}, more than "
                          f"privacy.{unit.UNIT}_per_window = {budget}")
    return tuple(entries)


def _denominator(raw: object, stat: str, metric: str, names: set[str], where: str) -> tuple[str, ...]:
    """A ratio's denominator: one metric name or a list of them, each of the [[metrics]], not the
    numerator alone; no other statistic takes one."""
    if stat != "ratio":
        if raw is not None:
            raise ConfigError(f"{where}.denominator: only a ratio has a denominator, not {stat}")
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(m, str) for m in items):
        raise ConfigError(f"{where}.denominator = {raw!r}: a ratio needs the metric (or list of metrics) whose "
                          f"sum divides {metric or 'its metric'}, e.g. [\"ai.suggestions_accepted\", "
                          "\"ai.suggestions_rejected\"]")
    for m in items:
        if m not in names:
            raise ConfigError(f"{where}.denominator: {m!r} must be one of the [[metrics]]: {', '.join(sorted(names))}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{where}.denominator = {items}: names a metric twice")
    if items == [metric]:
        raise ConfigError(f"{where}.denominator = {items}: a ratio of {metric} over itself is 1")
    return tuple(items)
