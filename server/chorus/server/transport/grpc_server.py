"""gRPC wiring: services, auth interceptor, health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chorus.server.root import Chorus
from chorus.server.store import probe_write
from chorus.server.transport.admission import Admission
from chorus.server.transport.gate import AuthInterceptor
from chorus.server.transport.metrics import Metrics
from chorus.server.transport.oidc import OidcVerifier
from chorus.server.transport.otlp_http import OtlpHttpServer, tls_context
from chorus.server.transport.ratelimit import RateLimiter
from chorus.server.transport.services import otlp as otlp_service
from chorus.server.transport.services import reflection
from chorus.server.transport.services.admin import AdminServicer
from chorus.server.transport.services.audit import AuditServicer
from chorus.server.transport.services.ingest import IngestServicer
from chorus.server.transport.services.release import ReleaseServicer
from chorus.server.transport.signals import StopEvent
from chorus.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
)

_log = logging.getLogger(__name__)
#: How often the store is probed for the health service.
HEALTH_PROBE_SECONDS = 5.0


def admin_servicer(chorus: Chorus) -> AdminServicer:
    """AdminService over the root's domain services: tokens, rosters, windows, counters."""
    return AdminServicer(tokens=chorus.tokens, rosters=chorus.rosters, windows=chorus.windows,
                         closer=chorus.closer, min_team_size=chorus.config.policy.min_team_size,
                         ingest_stats=chorus.ingestor.stats, otlp=chorus.otlp,
                         pending_shreds=chorus.shredder.pending, clock=chorus.clock)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # set: clients must present a certificate signed by it


class Server:
    """A started gRPC server around a Chorus instance."""

    def __init__(self, chorus: Chorus, listen: str, *, tls: TlsConfig | None = None,
                 max_workers: int = 16, metrics_listen: str | None = None,
                 otlp_http_listen: str | None = None, share_port: bool = False,
                 run_closer: bool = True) -> None:
        """`metrics_listen` (host:port): also serve Prometheus metrics over HTTP there;
        `otlp_http_listen`: also take OTLP/HTTP there.

        `share_port` and `run_closer` are for the workers of `chorus serve --workers`
        (chorus.server.transport.workers): bind with SO_REUSEPORT, and leave the window closer to one worker.
        """
        self.chorus = chorus
        self._run_closer = run_closer
        limits = chorus.config.limits
        limiter = RateLimiter(limits.ingest_rate_per_token, limits.ingest_burst_per_token, chorus.clock)
        self.metrics = Metrics(chorus, limiter)
        # Chorus tokens first (machines, installations without an IdP), then OpenID Connect.
        sso = [OidcVerifier(chorus.config.oidc).authenticate] if chorus.config.oidc else []
        admission = Admission([chorus.tokens.authenticate, *sso])
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="chorus-rpc"),
            interceptors=[self.metrics.interceptor(), AuthInterceptor(admission,
                                          max_rpc_seconds=limits.rpc_deadline_seconds)],
            # No SO_REUSEPORT unless asked: a second server on a busy address must fail, not
            # share the port and split traffic between two stores. Workers share it only with
            # their siblings: their parent holds the port (chorus.server.transport.workers.reserve_port).
            options=[("grpc.so_reuseport", int(share_port)),
                     ("grpc.max_receive_message_length", limits.max_message_bytes),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024)],
            maximum_concurrent_rpcs=max_workers * 8,
        )
        # One bucket per token for Report contributions and OTLP data points alike.
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(chorus.ingestor, limits, limiter),
                                                            self._grpc)
        otlp_service.add_to_server(otlp_service.MetricsServicer(chorus.otlp, limiter), self._grpc)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer(chorus), self._grpc)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(chorus.audit_trail, chorus.ledger.signer.public_key_pem), self._grpc)
        release_pb2_grpc.add_ReleaseServiceServicer_to_server(
            ReleaseServicer(chorus.releases, chorus.windows.list, chorus.config.close_interval_seconds), self._grpc)
        names = [ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
                 admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                 audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
                 release_pb2.DESCRIPTOR.services_by_name["ReleaseService"].full_name, otlp_service.SERVICE,
                 *otlp_service.DISCARDED]

        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        self._service_names = ("", *names)
        self._set_health(serving=True)
        self._stop_probe = threading.Event()
        reflection.enable(self._grpc, (*names, health.SERVICE_NAME))
        self.metrics.track_services((*names, health.SERVICE_NAME, reflection.V1, reflection.V1ALPHA))
        try:
            self.port = self._bind(listen, tls)
        except RuntimeError:  # grpc's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}: address in use or not available")
        self.address = f"{listen.rpartition(':')[0]}:{self.port}"
        #: host:port of the metrics listener, if any.
        try:
            self.metrics_address = self.metrics.listen(metrics_listen) if metrics_listen else None
        except OSError:
            self._grpc.stop(None)  # release the gRPC port bound above
            raise
        self.otlp_http: OtlpHttpServer | None = None
        if otlp_http_listen is not None:
            context = tls_context(tls.cert_chain, tls.private_key, tls.client_ca) if tls else None
            self.otlp_http = OtlpHttpServer(otlp_http_listen, chorus.otlp, admission, limiter,
                                            limits.max_message_bytes, context)

    def _bind(self, listen: str, tls: TlsConfig | None) -> int:
        if tls is None:
            return self._grpc.add_insecure_port(listen)
        creds = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)],
                                            root_certificates=tls.client_ca,
                                            require_client_auth=tls.client_ca is not None)
        return self._grpc.add_secure_port(listen, creds)

    def start(self) -> None:
        self._grpc.start()
        if self.otlp_http is not None:
            self.otlp_http.start()
        if self._run_closer:
            self.chorus.closer.start(self.chorus.config.close_interval_seconds)
        threading.Thread(target=self._probe_store, name="chorus-health", daemon=True).start()

    def _set_health(self, *, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in self._service_names:
            self._health.set(name, status)

    def _probe_store(self) -> None:
        """Report NOT_SERVING while the store cannot write, so a load balancer routes around us.

        Unhealthy when the probe's own write fails, or when any transaction met an unavailable
        store (disk full, I/O error, read-only, unreachable) since the previous probe: a probe
        can succeed on a full disk by reusing WAL space that a batch's larger write cannot.
        Healthy again, by itself, after one clean interval.
        """
        db = self.chorus.db
        serving = True
        failures = db.unavailable_count
        while not self._stop_probe.wait(HEALTH_PROBE_SECONDS):
            seen = db.unavailable_count  # read once: a failure after this counts next time
            try:
                probe_write(db)
                ok = seen == failures
            except Exception:
                ok = False
            failures = seen
            if ok != serving and not self._stop_probe.is_set():
                _log.warning("store %s: health %s", "writes again" if ok else "cannot write",
                             "SERVING" if ok else "NOT_SERVING")
                self._set_health(serving=ok)
                serving = ok

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking RPCs, let in-flight ones finish within `grace`, then close the store."""
        self._stop_probe.set()
        self._health.enter_graceful_shutdown()
        if self.otlp_http is not None:
            self.otlp_http.stop()
        self._grpc.stop(grace).wait()
        self.metrics.close()
        self.chorus.close()

    def serve_until(self, stop: StopEvent) -> None:
        """Block until `stop` is set (by SIGTERM or SIGINT: `signals.stop_on_signals`), then shut
        down gracefully."""
        stop.wait()
        _log.info("shutting down")
        self.stop()
