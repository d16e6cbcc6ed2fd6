"""A gRPC IngestService that parses each batch and acknowledges it without storing anything.

The anchor for bench_ingest.py: the ceiling set by gRPC and protobuf alone.
Run: python bench/_noop_server.py  (prints "noop serving on HOST:PORT").
"""

from __future__ import annotations

import signal
import sys
from concurrent import futures

import grpc

from chorus.v1 import ingest_pb2, ingest_pb2_grpc


class _Noop(ingest_pb2_grpc.IngestServiceServicer):
    def Report(self, request: ingest_pb2.ReportRequest, context: grpc.ServicerContext) -> ingest_pb2.ReportResponse:
        return ingest_pb2.ReportResponse(accepted=len(request.contributions))


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(_Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"noop serving on 127.0.0.1:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()
    sys.exit(0)


if __name__ == "__main__":
    main()
