"""SDK clients feeding the whole roster while servers are killed (the replica and worker tests):
what each client sent, and what the closed window must then hold. One copy, so that both
deployments are held to the same exactly-once check."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from chorus.client import Client
from tests._roster import replica_roster as roster_rows

#: Seconds between a client's rounds: 400 rounds then last at least 20 s, longer than three worker
#: or replica restarts take on an idle machine (at 0.02 s a fast machine ran out of rounds mid-test).
ROUND_PAUSE = 0.05
#: Seconds `after_rounds` waits for the clients before it fails (a stuck sender must not hang the suite).
AFTER_ROUNDS_TIMEOUT = 300


class FixedClock:
    """All counts in one minute bucket, so the whole run lands in one window."""

    def __init__(self) -> None:
        self._now = time.time()

    def time(self) -> float:
        return self._now


class Traffic:
    """One thread per client, each counting ai.requests and ai.tokens for every person per round.

    Even-numbered people count 1 ai.request a round; odd-numbered ones `heavy` to 15, so that
    they pass the ai.requests bound while the others stay under it.
    """

    def __init__(self, clients: list[Client], heavy: int, max_rounds: int = 400) -> None:
        self.clients = clients
        self.heavy = heavy
        self.max_rounds = max_rounds
        self.users = [u for u, _ in roster_rows()]
        self.stop = threading.Event()
        self.rounds = [0] * len(clients)
        self.truths: list[Counter[tuple[str, str]]] = [Counter() for _ in clients]

    def feed(self, i: int) -> None:
        rng = random.Random(i)
        for r in range(self.max_rounds):
            if self.stop.is_set():
                break
            for n, user in enumerate(self.users):
                for metric, value in (("ai.requests", 1 if n % 2 == 0 else rng.randint(self.heavy, 15)),
                                      ("ai.tokens", rng.randint(1, 400))):
                    self.clients[i].count(metric, value, user=user)
                    self.truths[i][(user, metric)] += value
            self.rounds[i] = r + 1
            time.sleep(ROUND_PAUSE)

    def after_rounds(self, extra: int) -> None:
        """Until every client has fed `extra` more rounds."""
        target = min(self.rounds) + extra
        # A client that fed all max_rounds feeds no more: fail then, rather than wait forever.
        assert target <= self.max_rounds, f"traffic ended at {self.max_rounds} rounds before {target}"
        give_up = time.monotonic() + AFTER_ROUNDS_TIMEOUT
        while min(self.rounds) < target:
            assert time.monotonic() < give_up, (f"traffic reached rounds {self.rounds}, not {target}, within "
                                                f"{AFTER_ROUNDS_TIMEOUT} s")
            time.sleep(0.01)

    @contextmanager
    def running(self) -> Iterator[None]:
        threads = [threading.Thread(target=self.feed, args=(i,)) for i in range(len(self.clients))]
        for t in threads:
            t.start()
        try:
            yield
        finally:
            self.stop.set()
            for t in threads:
                t.join()

    def delivered(self) -> int:
        """Flush and close every client, asserting nothing was lost; return the retries."""
        retries = 0
        for client in self.clients:
            assert client.flush(timeout=60), "the SDK could not deliver everything within 60 s"
            stats = client.stats()
            client.close()
            assert (stats.dropped, stats.failed_batches, dict(stats.rejected)) == (0, 0, {})
            retries += stats.retries
        return retries

    def expected(self, bounds: dict[str, int]) -> dict[tuple[str, str], list[int]]:
        """[total, people] per (team, metric) after clamping each person at the metric's bound."""
        team_of = dict(roster_rows())
        truth: Counter[tuple[str, str]] = sum(self.truths, Counter())
        clamped = {key: min(value, bounds[key[1]]) for key, value in truth.items()}
        assert {v for (u, m), v in clamped.items() if m == "ai.requests"} >= {2000}
        assert any(v < 2000 for (u, m), v in clamped.items() if m == "ai.requests")
        expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for (user, metric), value in clamped.items():
            expected[(team_of[user], metric)][0] += value
            expected[(team_of[user], metric)][1] += 1
        return dict(expected)
