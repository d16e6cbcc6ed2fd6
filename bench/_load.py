"""A load generator that costs almost nothing: pre-serialised `Report`s over raw gRPC calls.

The same generator feeds Chorus and the no-op anchor (bench_ingest.py), so the difference
between them is the server's. One process per generator (its own GIL), started with
`subprocess` (it imports only gRPC and the wire stubs), one thread per connection, one request
in flight per connection; each Report's contributions are serialised once, before the clock
starts, and each request only prefixes a fresh batch id (protobuf merges concatenated fields).

Protocol: a JSON job on stdin ({"address", "token", "rounds", "metrics", "shards": [[[user,
...] per batch] per connection]}); the process prints "ready" once every connection is up,
waits for a line on stdin, sends, and prints a JSON result {"sent": n, "errors": [...]}.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from chorus.v1 import ingest_pb2

REPORT = "/chorus.v1.IngestService/Report"


def serialised(people: list[str], metrics: list[str], when: datetime) -> bytes:
    """A Report without its batch id, serialised: one contribution per (person, metric)."""
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return ingest_pb2.ReportRequest(source="bench", contributions=[
        ingest_pb2.Contribution(user=u, metric=m, value=1, event_time=stamp)
        for u in people for m in metrics]).SerializeToString()


def main() -> None:
    job = json.loads(sys.stdin.readline())
    when = datetime.now(UTC) - timedelta(minutes=1)
    metrics, rounds = job["metrics"], job["rounds"]
    metadata = (("authorization", f"Bearer {job['token']}"),)
    payloads = [[(serialised(people, metrics, when), len(people) * len(metrics)) for people in shard]
                for shard in job["shards"]]
    errors: list[str] = []
    sent = [0] * len(payloads)
    connected, go = threading.Barrier(len(payloads) + 1), threading.Event()

    def send(n: int) -> None:
        # A private subchannel pool: each channel is its own TCP connection (SO_REUSEPORT
        # spreads connections, not requests, over the workers).
        with grpc.insecure_channel(job["address"], options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = channel.unary_unary(REPORT, request_serializer=None,
                                       response_deserializer=ingest_pb2.ReportResponse.FromString)
            grpc.channel_ready_future(channel).result(timeout=60)
            connected.wait()
            go.wait()
            try:
                for _ in range(rounds):
                    for body, size in payloads[n]:
                        head = ingest_pb2.ReportRequest(batch_id=uuid.uuid4().hex).SerializeToString()
                        reply = call(head + body, metadata=metadata, timeout=600)
                        if reply.accepted != size or reply.rejections or reply.duplicate:
                            errors.append(f"accepted {reply.accepted} of {size}")
                        sent[n] += size
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(payloads))]
    for t in threads:
        t.start()
    connected.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for t in threads:
        t.join()
    print(json.dumps({"sent": sum(sent), "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
