"""Start gRPC calls at one moment, for the races on the budget (one place, used by the release,
replica and worker tests): every call waits at one barrier, so all are in flight together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import TypeVar

import grpc

T = TypeVar("T")


def run_together(calls: Sequence[Callable[[], T]]) -> list[T | grpc.RpcError]:
    """Start every call at the same moment, each on its own thread; return each result, in the
    order of `calls`, or the RpcError it raised."""
    barrier = Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | grpc.RpcError:
        barrier.wait()
        try:
            return call()
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))
