"""`chorus demo`: a real server in a temporary directory, a simulated company, the real SDK.

Everything goes over real gRPC on 127.0.0.1 with the same tokens and roles a deployment uses.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from chorus.client import Client
from chorus.server.cli import admin as admin_cli
from chorus.server.cli import audit as audit_cli
from chorus.server.cli import report as report_cli
from chorus.server.demo import _killed_tool, _otel_tool
from chorus.server.demo._world import BURNER, BURNER_TOKENS, ORGS, OTEL_TOOL, TOOLS, World, build
from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, window_of
from chorus.server.model.hierarchy import ORG, ROOT, TEAM
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
)

#: Written into a kept demo directory: a later `chorus demo --keep` may replace it.
DEMO_MARKER = "chorus-demo"
#: The analyst token a kept demo leaves for `chorus dashboard` (README: sign in with it).
ANALYST_TOKEN_FILE = "analyst.token"


class _Demo:
    def __init__(self, console: Console, data_dir: Path, seed: int, kept: bool = False) -> None:
        self.console = console
        self.data_dir = data_dir
        self.kept = kept
        self.world: World = build(seed)
        # The built-in configuration with its commented [otlp] mappings enabled, plus the GenAI
        # convention's template scoped to the demo's OTLP tool (as docs/otlp.md tells operators to).
        genai = (f'\n[[otlp.metrics]]\nname = "{_otel_tool.INSTRUMENT}"\nmetric = "ai.tokens"\n'
                 f'attributes = {{ "gen_ai.token.type" = ["input", "output"] }}\n'
                 f'resource = {{ "service.name" = ["{OTEL_TOOL}"] }}\n')
        text = config.with_otlp_enabled(config.DEFAULT_TOML) + genai
        self.chorus = Chorus(config.parse(tomllib.loads(text)), data_dir)
        self.policy = self.chorus.config.policy
        admin_token_file = self.chorus.bootstrap_admin_token()
        if admin_token_file is None:
            raise RuntimeError(f"{data_dir} already holds a Chorus admin token: the demo needs a fresh directory")
        (data_dir / DEMO_MARKER).write_text("written by `chorus demo`; a later `chorus demo --keep` replaces this "
                                            "directory\n")
        self.server = Server(self.chorus, "127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.admin_token = admin_token_file.read_text().strip()
        self.admin_auth = (("authorization", f"Bearer {self.admin_token}"),)
        self.span = window_of(datetime.now(UTC), self.policy.window_length)
        self.window = self.span.id

    def token(self, role: str, name: str) -> str:
        reply = self.admin.CreateToken(admin_pb2.CreateTokenRequest(
            role=getattr(admin_pb2, f"ROLE_{role.upper()}"), name=name), metadata=self.admin_auth)
        return reply.token

    def run(self) -> None:
        c = self.console
        c.rule("[bold]1. A Chorus server")
        unit = "ISO weeks" if self.policy.window_length is WindowLength.WEEK else "UTC days"
        c.print(f"Serving on {self.server.address} with its SQLite store in {self.data_dir}.\n"
                f"Windows are {unit}; the current window is [bold]{self.window}[/]. Minimum team size "
                f"k = {self.policy.min_team_size}; privacy budget {self.policy.budget_per_window} per team and "
                "window.")
        self.import_roster()
        self.run_tools()
        self.raw_batches()
        self.summary()
        self.close_window()
        self.leadership_report()
        self.audit()

    def import_roster(self) -> None:
        self.console.rule("[bold]2. The roster")
        reply = self.admin.ImportRoster(iter([admin_pb2.ImportRosterRequest(
            entries=[admin_pb2.RosterEntry(user=u, team=t, org=ORGS[t]) for u, t in self.world.roster])]),
            metadata=self.admin_auth)
        table = Table("team", "org", "people on the roster", "released on its own?")
        for team in reply.teams:
            ok = team.size >= self.policy.min_team_size
            verdict = "yes" if ok else f"[yellow]no: below k={self.policy.min_team_size}, counted in {team.org}"
            table.add_row(team.team, team.org, str(team.size), verdict)
        self.console.print(table)
        self.console.print("The roster's org column places each team in the company's tree (a path such as "
                           "engineering/apps would nest an org in another); the tree is public, like the team "
                           "sizes.")

    def run_tools(self) -> None:
        self.console.rule("[bold]3. AI tools report usage through the SDK")
        clients = {tool: Client(self.server.address, self.token("ingest", tool), source=tool,
                                source_version="1.0", flush_interval=0.2) for tool in TOOLS}
        events = [e for e in self.world.events if e.tool != OTEL_TOOL]
        with Progress(console=self.console, transient=False) as progress:
            task = progress.add_task("count() calls", total=len(events))
            for i, event in enumerate(events, start=1):
                clients[event.tool].count(event.metric, event.value, user=event.user)
                if i % 200 == 0:
                    progress.update(task, completed=i)
            progress.update(task, completed=len(events))
            flushing = progress.add_task("flush to server", total=len(clients))
            for client in clients.values():
                client.close(timeout=30)
                progress.advance(flushing)
        self.tool_stats = {tool: client.stats() for tool, client in clients.items()}
        table = Table("tool", "calls", "sent", "accepted", "rejected", "dropped")
        for column in table.columns:
            column.no_wrap = True
        calls = Counter(e.tool for e in events)
        for tool, stats in self.tool_stats.items():
            table.add_row(tool, str(calls[tool]), str(stats.accepted + sum(stats.rejected.values())),
                          str(stats.accepted), ", ".join(f"{v} {k}" for k, v in stats.rejected.items()) or "0",
                          str(stats.dropped))
        self.console.print(table)
        self.console.print("The SDK pre-aggregates count() calls per (user, metric, minute) in memory, "
                           "so thousands of calls become a few contributions (\"sent\") per batch; "
                           "\"dropped\" counts what a client had to discard (memory bound).")
        _otel_tool.run(self, [e for e in self.world.events if e.tool == OTEL_TOOL])
        _killed_tool.run(self)

    def raw_batches(self) -> None:
        self.console.rule("[bold]5. The server checks every contribution")
        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        auth = (("authorization", f"Bearer {self.token('ingest', 'handwritten-client')}"),)
        now, previous = Timestamp(), Timestamp()
        now.FromDatetime(datetime.now(UTC))
        previous.FromDatetime(self.span.start - timedelta(seconds=self.policy.grace_seconds + 3600))
        request = ingest_pb2.ReportRequest(batch_id=uuid.uuid4().hex, source="handwritten", contributions=[
            ingest_pb2.Contribution(user="user-mobile-01", metric="ai.requests", value=2, event_time=now),
            ingest_pb2.Contribution(user="user-mobile-01", metric="ai.requests", value=-5, event_time=now),
            ingest_pb2.Contribution(user="user-mobile-01", metric="ai.requests", value=1, event_time=previous),
        ])
        first = stub.Report(request, metadata=auth)
        again = stub.Report(request, metadata=auth)
        self.world.truth[("user-mobile-01", "ai.requests")] += 2
        described = ["#0: 2 requests, now", "#1: -5 requests, now", "#2: 1 request, in the previous window"]
        table = Table("contribution", "answer")
        table.add_row(described[0], "accepted")
        for r in first.rejections:
            reason = ingest_pb2.RejectReason.Name(r.reason).removeprefix("REJECT_REASON_")
            table.add_row(described[r.index], f"[yellow]{reason}[/]: {r.message}")
        table.add_row("same batch_id sent again", f"duplicate={again.duplicate}, accepted={again.accepted}")
        self.console.print(table)

    def summary(self) -> None:
        self.console.rule("[bold]6. What the server stored")
        admin_cli.stats(server=self.server.address, token=self.admin_token)  # what `chorus stats` shows
        bound = self.policy.metric("ai.tokens").max_per_user  # type: ignore[union-attr]
        self.console.print(f"{BURNER} sent {BURNER_TOKENS:,} tokens; their stored total is capped at "
                           f"max_per_user = {bound:,}, so burning tokens buys nothing.")

    def close_window(self) -> None:
        self.console.rule("[bold]7. The window closes")
        reply = self.admin.CloseWindow(admin_pb2.CloseWindowRequest(window=self.window), metadata=self.admin_auth)
        self.console.print(
            f"Window {reply.window.id} closed (forced now; normally at its end plus "
            f"{self.policy.grace_seconds // 3600} h grace): the per-person rows were folded into "
            "team statistics, then deleted together with the window's pseudonym key. From here on nobody, "
            "the operator included, can tell individuals apart in this window.")
        by_level: dict[str, list[str]] = {}
        for e in self.policy.release_plan:
            over = f" over {' + '.join(e.denominator)}" if e.denominator else ""
            by_level.setdefault(e.level, []).append(f"{e.statistic} of {e.metric}{over}" if e.metric else e.statistic)
        where = {ROOT: "for the company", ORG: "for every org", TEAM: "for every team of at least k people"}
        plan = "; ".join(f"{', '.join(what)} {where[level]}" for level, what in sorted(
            by_level.items(), key=lambda item: (ROOT, ORG, TEAM).index(item[0])))
        unit = self.policy.budget_per_window.UNIT
        self.console.print(
            f"Right after closing, the server released the window's release plan, once: {plan}; each team's "
            f"budget pays for its own level and every level above it, {self.policy.plan_cost()} of its "
            f"{unit} {self.policy.budget_per_window}. Everyone reads these numbers from now on without spending "
            "anything; the rest of the budget waits for a question nobody planned (`chorus report --release`).")

    def leadership_report(self) -> None:
        c = self.console
        c.rule("[bold]8. Leadership's report (role analyst)")
        analyst = self.token("analyst", "vp-engineering")
        ask = partial(report_cli.report, window=self.window, server=self.server.address, token=analyst,
                      statistic=[report_cli.Statistic.SUM, report_cli.Statistic.MEAN],
                      metric=["ai.tokens", "ai.requests"])
        ask()
        stub = release_pb2_grpc.ReleaseServiceStub(self.channel)
        reply = stub.Release(release_pb2.ReleaseRequest(
            window=self.window, teams=["payments"], metrics=["ai.tokens"],
            statistics=[release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_SUM)]),
            metadata=(("authorization", f"Bearer {analyst}"),))
        released = reply.teams[0].estimates[0]
        truth = self.world.clamped_team_sum("payments", "ai.tokens", self.policy)
        bound = self.policy.metric("ai.tokens").max_per_user  # type: ignore[union-attr]
        c.print(f"\n[bold]The token burner changed nothing that matters:[/] {BURNER} sent {BURNER_TOKENS:,} tokens, "
                f"but payments' released ai.tokens sum is {released.value:,.0f} ± {released.ci95:,.0f} "
                f"(the simulation knows the clamped truth: {truth:,}; without the bound it would be "
                f"{truth - bound + BURNER_TOKENS:,}).")
        c.print("Each number is a value ± the half-width of its 95% interval. The noise is what hides any one "
                "person: its size depends on the privacy budget spent and the metric's bound, not on the team, so "
                "larger teams get relatively sharper numbers, and an interval wider than its value is expected for "
                "small ones.")
        c.rule("[bold]9. Asking again costs nothing and changes nothing")
        ask()
        if self.kept:
            token_file = self.data_dir / ANALYST_TOKEN_FILE
            token_file.touch(mode=0o600)
            token_file.write_text(analyst + "\n")
            c.print(f"The dashboard shows the same numbers, free: `chorus serve --data-dir {self.data_dir}`, then "
                    f"`chorus dashboard`, signed in with the analyst token in {token_file}.",
                    markup=False, highlight=False)
        else:
            c.print(f"The dashboard shows the same numbers, free: `chorus demo --keep DIR`, then `chorus serve "
                    f"--data-dir DIR` and `chorus dashboard`, signed in with the analyst token in DIR/"
                    f"{ANALYST_TOKEN_FILE}.", markup=False, highlight=False)
        c.rule("[bold]10. The same window by org")
        # The default plan releases every org's adoption and ai.tokens sum at close (plan entries
        # with level "org"): --release finds them released and charges nothing more.
        report_cli.report(window=self.window, server=self.server.address, token=analyst,
                          statistic=[report_cli.Statistic.SUM], metric=["ai.tokens"],
                          level=report_cli.Level.ORG, spend=True, yes=True)
        c.print("design has 3 people, below k: it is never released on its own, yet its people are inside "
                "product's numbers (and the company's). The plan released every org and the company directly at "
                "close, each charged to every team below it. Teams, orgs and the company all have releases, so "
                "the table shows consistent estimates (†): engineering equals platform plus mobile plus data, "
                "exactly.")

    def audit(self) -> None:
        c = self.console
        c.rule("[bold]11. The privacy officer verifies the ledger offline (role auditor)")
        auditor = self.token("auditor", "privacy-officer")
        ledger = self.data_dir / "ledger-export.jsonl"  # inside the demo's directory, never beside it
        key = self.data_dir / "ledger-public-key.pem"
        audit_cli.export(out=ledger, public_key_out=key, server=self.server.address, token=auditor)
        audit_cli.verify_ledger(ledger, key)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=1)


def prepare(keep: Path) -> None:
    """Make `keep` ready for a demo: new or empty as it is, or a previous demo's (its marker file),
    which is replaced; anything else is refused (ValueError), so a real data directory is never touched."""
    if keep.exists() and not keep.is_dir():
        raise ValueError(f"--keep {keep} is a file: name a new or empty directory")
    if keep.is_dir() and any(keep.iterdir()):
        if not (keep / DEMO_MARKER).exists():
            raise ValueError(f"--keep {keep} is not empty and holds no earlier demo (no {DEMO_MARKER}): name a new "
                             "or empty directory")
        shutil.rmtree(keep)


def run(console: Console | None = None, seed: int = 7, keep: Path | None = None) -> None:
    """Run the demo; keep the data directory at `keep` if given, else a temporary one."""
    console = console or Console()
    if keep is not None:
        prepare(keep)
    with tempfile.TemporaryDirectory(prefix="chorus-demo-") as tmp:
        data_dir = keep or Path(tmp) / "data"
        demo = _Demo(console, data_dir, seed, kept=keep is not None)
        try:
            demo.run()
        finally:
            demo.close()
