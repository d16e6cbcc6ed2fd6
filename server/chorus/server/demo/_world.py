"""The simulated company of the demo: teams, people, and a week of AI-tool usage.

The ground truth lives only here, in the simulation; the server never sees more than
pseudonymous, clamped totals and releases only noisy team statistics.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from chorus.server.model.policy import Policy

TEAMS = {"platform": 60, "payments": 45, "mobile": 35, "data": 25, "design": 3}
#: The company's two orgs (the roster's org column): design, below k, is counted in product.
ORGS = {"platform": "engineering", "data": "engineering", "mobile": "engineering",
        "payments": "product", "design": "product"}
TOOLS = ("code-assistant", "chat-assistant", "review-bot")
OTEL_TOOL = "otel-agent"  # reports through the OpenTelemetry SDK over OTLP, not the Chorus SDK
BURNER = "user-payments-02"
BURNER_TOKENS = 50_000_000
CONTRACTOR = "user-contractor-01"  # uses the tools but is not on the roster


@dataclass(frozen=True, slots=True)
class Event:
    tool: str
    user: str
    metric: str
    value: int


@dataclass
class World:
    roster: list[tuple[str, str]]
    events: list[Event]
    truth: Counter[tuple[str, str]] = field(default_factory=Counter)

    def clamped_team_sum(self, team: str, metric: str, policy: Policy) -> int:
        """What the server's clamped sum must equal (known only to the simulation)."""
        spec = policy.metric(metric)
        assert spec is not None
        return sum(min(total, spec.max_per_user) for (user, m), total in self.truth.items()
                   if m == metric and (user, team) in self._membership)

    @property
    def _membership(self) -> set[tuple[str, str]]:
        return set(self.roster)


def build(seed: int) -> World:
    """A roster of five teams (one below k) and a week of usage from three tools."""
    rng = random.Random(seed)
    roster = [(f"user-{team}-{i:02d}", team) for team, size in TEAMS.items() for i in range(size)]
    events: list[Event] = []
    for user, _team in roster:
        if rng.random() < 0.2:  # some people do not use AI tools at all this week
            continue
        for _ in range(rng.randint(10, 250)):
            tool = rng.choice(TOOLS)
            events.append(Event(tool, user, "ai.requests", 1))
            events.append(Event(tool, user, "ai.tokens", rng.randint(200, 4000)))
            if rng.random() < 0.4:
                events.append(Event(tool, user, "ai.suggestions_accepted", rng.randint(1, 3)))
        if rng.random() < 0.7:
            events.append(Event("chat-assistant", user, "ai.tasks_completed", rng.randint(1, 12)))
    # A tool that only speaks OpenTelemetry, used by part of the platform team.
    events += [Event(OTEL_TOOL, user, "ai.tokens", rng.randint(500, 5000))
               for user, team in roster if team == "platform" and rng.random() < 0.5]
    # One person burns tokens to climb a leaderboard that does not exist.
    events += [Event("code-assistant", BURNER, "ai.tokens", BURNER_TOKENS // 500)] * 500
    # Usage the server must refuse: someone not on the roster, a metric not in the policy.
    events.append(Event("chat-assistant", CONTRACTOR, "ai.requests", 3))
    events.append(Event("review-bot", "user-data-01", "ai.vibes", 1))
    rng.shuffle(events)
    world = World(roster, events)
    for e in events:
        world.truth[(e.user, e.metric)] += e.value
    return world
