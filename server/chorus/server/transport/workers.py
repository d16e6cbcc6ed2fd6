"""`chorus serve --workers N`: N server processes on one port and one store, under one parent.

One Python process is GIL-bound at one core; gRPC's answer for CPU-bound Python servers is
several processes accepting on one port with SO_REUSEPORT (grpc's examples/python/multiprocessing).

Invariants:

* Only this parent's workers share the port. The parent first checks that the address is
  free like a single server does, then reserves it: it binds (without listening) a socket
  with SO_REUSEPORT and holds it until every worker is gone. Workers bind the same port with
  SO_REUSEPORT; an independent `chorus serve` binds without it and fails, so a second server
  never silently splits traffic with this one. Port 0 is resolved once, by the reservation.
* Workers are fresh interpreters (`subprocess`, fork + exec), never `os.fork` of a process that
  imported gRPC: gRPC's threads and polling state do not survive a fork. The parent starts no
  gRPC server and opens no channel.
* Everything that must happen once happens in the parent before any worker starts: migrations,
  the ledger signing key, the config record and the first admin token (`prepare`).
* Exactly one worker, index 0, runs the window closer and the pending-shred retries
  (chorus.server.domain.closer). A restarted worker keeps its index, so the closer comes back with
  worker 0. Closing stays safe even if two closers ran: it takes the store's closer lock.
* Workers hold nothing acknowledged in memory: a batch is acknowledged after its transaction
  committed. A worker that dies (SIGKILL, crash) is started again after `RESTART_DELAY`;
  clients retry the batches it did not acknowledge and the batch id makes them count once.
* SIGTERM or SIGINT to the parent forwards SIGTERM to every worker (each stops gracefully:
  in-flight RPCs finish within the grace period, the store is closed), waits for them, then
  exits. A worker whose parent disappears stops by itself (`watch_parent`).
* Per process: RPC counters, the `IngestStats` that `chorus stats` shows (the worker that
  answered), rate limiters (a token's limit applies per worker), and HTTP listeners that are
  not ingest paths. Shared through the store: everything acknowledged, budgets, batch
  de-duplication, the ledger, tokens, the roster.
* `--metrics-listen` is one target, served by the parent: each worker serves its registry on
  a loopback port the kernel chooses and names it in its ready message (`ready PORT`); the
  parent merges the workers' scrapes (chorus.server.transport.worker_metrics).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from chorus.server.transport.signals import StopEvent
from chorus.server.transport.worker_metrics import WorkerTarget

_log = logging.getLogger(__name__)

#: The most workers `--workers` accepts: more processes than this only add contention.
MAX_WORKERS = 64
#: Seconds before a dead worker is started again (a crash loop must not spin).
RESTART_DELAY = 0.5
#: Seconds a worker has to become ready.
READY_TIMEOUT = 120.0
#: Seconds a worker has to stop after SIGTERM before it is killed (its own grace is 5 s).
STOP_TIMEOUT = 15.0
READY = b"ready"


def parse_count(value: str) -> int:
    """`--workers`: a number in [1, MAX_WORKERS] or `auto` (the cores this process may use)."""
    if value == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1))
    if not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise ValueError(f"--workers {value!r}: expected a number from 1 to {MAX_WORKERS}, or auto "
                         "(one worker per core)")
    return int(value)


def reserve_port(address: str) -> tuple[list[socket.socket], str]:
    """Bind every address `address` resolves to with SO_REUSEPORT (not listening), as gRPC will;
    return the sockets and host:port (port 0 resolved by the first bind).

    Only sockets that also set SO_REUSEPORT (this parent's workers) can bind the port while the
    reservation is held. OSError when the address is taken or cannot be bound.
    """
    host, _, port = address.rpartition(":")
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
                host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if len(sockets) > 1:  # the others on the port the first one got
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets, f"{host}:{sockets[0].getsockname()[1]}"


def signal_ready(fd: int | None, metrics_port: int | None = None) -> None:
    """In a worker: tell the parent this worker serves (its port is bound, its closer started),
    and on which loopback port it serves its metrics, if it does."""
    if fd is not None:
        os.write(fd, READY + (b" %d" % metrics_port if metrics_port is not None else b"") + b"\n")
        os.close(fd)


def watch_parent(on_orphaned: Callable[[], None], interval: float = 1.0) -> None:
    """In a worker: call `on_orphaned` once if the parent goes away (it was SIGKILLed)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _log.warning("the supervising process is gone; this worker stops")
        on_orphaned()

    threading.Thread(target=watch, name="chorus-parent-watch", daemon=True).start()


class WorkerFailed(RuntimeError):
    """A worker exited before it became ready; its output says why."""


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    starts: int = 1
    metrics_port: int | None = None  # from its ready message; None until it is ready


class Supervisor:
    """Starts `count` workers from `command(index, ready_fd)`, restarts the ones that die, stops all."""

    def __init__(self, command: Callable[[int, int], list[str]], count: int, stopping: StopEvent,
                 env: dict[str, str] | None = None) -> None:
        """`stopping`: set (by SIGTERM or SIGINT) to make `run` return; `env`: the workers'
        environment (default: this process's)."""
        self._command = command
        self._env = env
        self._count = count
        self._workers: list[_Worker] = []
        self.stopping = stopping

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def _spawn(self, index: int) -> tuple[subprocess.Popen[bytes], int]:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(self._command(index, write_fd), pass_fds=(write_fd,), env=self._env)
        finally:
            os.close(write_fd)
        return proc, read_fd

    def metrics_targets(self) -> dict[int, WorkerTarget]:
        """Worker index -> its metrics port (None while not ready) and restarts, for the scrape."""
        return {w.index: WorkerTarget(w.metrics_port, w.starts - 1) for w in self._workers}

    def _await_ready(self, worker: _Worker, read_fd: int, timeout: float) -> None:
        """Until the worker's ready message (its metrics port recorded); WorkerFailed if none comes."""
        deadline = time.monotonic() + timeout
        got: list[bytes] = []
        try:
            while not self.stopping.is_set() and time.monotonic() < deadline:
                if select.select([read_fd], [], [], 0.2)[0]:
                    got = os.read(read_fd, 64).split()
                    break
        finally:
            os.close(read_fd)
        if got[:1] == [READY]:
            worker.metrics_port = int(got[1]) if len(got) > 1 else None
        elif not self.stopping.is_set():
            worker.proc.kill()
            code = worker.proc.wait()
            raise WorkerFailed(f"worker (pid {worker.proc.pid}) did not become ready (exit code {code})")

    def start(self) -> None:
        """Start every worker and wait until all serve; WorkerFailed (all stopped) if one cannot."""
        pending = [self._spawn(i) for i in range(self._count)]
        self._workers = [_Worker(i, proc) for i, (proc, _) in enumerate(pending)]
        for i, (_, read_fd) in enumerate(pending):
            try:
                self._await_ready(self._workers[i], read_fd, READY_TIMEOUT)
            except WorkerFailed:
                for _, later in pending[i + 1:]:
                    os.close(later)
                self.stop()
                raise

    def run(self) -> None:
        """Until `stopping` is set: start again every worker that died."""
        while not self.stopping.wait(0.1):
            for worker in self._workers:
                code = worker.proc.poll()
                if code is None or self.stopping.is_set():
                    continue
                _log.warning("worker %d (pid %d) exited with %s; starting it again", worker.index,
                             worker.proc.pid, f"signal {-code}" if code < 0 else f"code {code}")
                time.sleep(RESTART_DELAY)
                if self.stopping.is_set():
                    break
                worker.metrics_port = None
                proc, read_fd = self._spawn(worker.index)
                worker.proc, worker.starts = proc, worker.starts + 1
                try:
                    self._await_ready(worker, read_fd, READY_TIMEOUT)
                except WorkerFailed as exc:
                    _log.error("%s; trying again", exc)
                else:
                    _log.info("worker %d (pid %d) serves again", worker.index, proc.pid)

    def stop(self) -> None:
        """SIGTERM every worker, wait for them (SIGKILL after STOP_TIMEOUT)."""
        self.stopping.set()
        for worker in self._workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("worker %d (pid %d) did not stop in %.0f s; killing it", worker.index,
                           worker.proc.pid, STOP_TIMEOUT)
                worker.proc.kill()
                worker.proc.wait()
