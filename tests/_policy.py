"""The policy the test suite runs under.

Tests pin their own policy (UTC-day windows, small epsilons, the bounds below) so that the
product's defaults in `chorus.server.model.config.DEFAULT_TOML` can change without moving every
expectation. Tests of the defaults themselves use `config.load(None)`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from chorus.server.model import config

SUITE_TOML = """\
# Chorus server configuration. Privacy settings are frozen into each window when it
# opens; changes apply from the next window.

[server]
listen = "127.0.0.1:7355"
# database = "postgresql://user@host/chorus"   # default: SQLite in the data directory

[windows]
length = "day"        # "day" (UTC) or "week" (ISO week, UTC)
grace = "2h"          # contributions may arrive this long after a window ends

[privacy]
mechanism = "discrete_laplace"   # the suite's expectations are Laplace's; Gaussian tests write their own
epsilon_per_window = "1"   # budget per team-window
min_team_size = 5          # k: smaller teams are never released on their own
retention_windows = 52     # windows older than this can no longer be released
release_plan = []          # no planned releases: tests that need a plan write their own

[privacy.default_epsilon]  # per statistic; mean and adoption are post-processing
sum = "0.05"
count = "0.05"
histogram = "0.05"
active = "0.05"

[[metrics]]
name = "ai.tokens"
description = "Tokens consumed by AI assistants"
max_per_user = 200000
histogram_edges = [10000, 50000, 100000, 150000]

[[metrics]]
name = "ai.requests"
description = "Requests sent to AI assistants"
max_per_user = 2000
histogram_edges = [50, 200, 500, 1000]

[[metrics]]
name = "ai.suggestions_accepted"
description = "AI suggestions accepted into code or documents"
max_per_user = 1000
histogram_edges = [10, 50, 200, 500]

[[metrics]]
name = "ai.tasks_completed"
description = "Tasks completed with AI assistance"
max_per_user = 100
histogram_edges = [3, 10, 30, 60]
"""


def suite_config() -> config.Config:
    """The parsed suite policy."""
    return config.parse(tomllib.loads(SUITE_TOML))


def suite_config_file(directory: Path) -> Path:
    """The suite policy written as a file, for `chorus serve --config` in child processes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "suite-config.toml"
    path.write_text(SUITE_TOML)
    return path


#: The suite's policy with an [otlp] mapping (Claude-Code-shaped tokens, a GenAI histogram, a
#: counter, a scaled cost and a gauge that must be ignored).
OTLP_TOML = SUITE_TOML + """
[otlp]
identity_attributes = ["user.email", "enduser.id"]

[[otlp.metrics]]
name = "claude_code.token.usage"
metric = "ai.tokens"
attributes = { type = ["input", "output"] }

[[otlp.metrics]]
name = "tool.requests"
metric = "ai.requests"

[[otlp.metrics]]
name = "gen_ai.client.token.usage"
metric = "ai.tokens"

[[otlp.metrics]]
name = "tool.cost"
metric = "ai.suggestions_accepted"
scale = 1000

[[otlp.metrics]]
name = "tool.gauge"
metric = "ai.tasks_completed"
"""


def otlp_config() -> config.Config:
    return config.parse(tomllib.loads(OTLP_TOML))
