# The Chorus server image (docs/deployment.md, "Container image and compose").
# Not built on Chorus's development machine, which has no container registry to pull the base
# from: tests/deploy/test_container.py lints this file with hadolint and runs the commands it
# sets (entrypoint, health check) as plain processes. Build it with `docker build -t chorus .`.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A system user without a login shell; the data directory is its own, mode 0700, and TLS files
# may be mounted (read-only) under /etc/chorus/tls.
RUN groupadd --system --gid 10001 chorus \
    && useradd --system --uid 10001 --gid chorus --home-dir /var/lib/chorus --shell /usr/sbin/nologin chorus \
    && install -d -o chorus -g chorus -m 0700 /var/lib/chorus /etc/chorus/tls

WORKDIR /opt/chorus
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY client ./client
COPY server ./server
# The project itself: its dependencies' versions are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server]"

USER 10001:10001
# Every `chorus serve` flag has a variable (docs/deployment.md, "Settings"); a flag given to
# `docker run IMAGE serve ...` wins over these. Plaintext on 0.0.0.0 is refused: give
# CHORUS_TLS_CERT and CHORUS_TLS_KEY (and CHORUS_CA_FILE for the health check), or
# CHORUS_INSECURE=1 behind a proxy that terminates TLS.
ENV CHORUS_DATA_DIR=/var/lib/chorus \
    CHORUS_LISTEN=0.0.0.0:7355 \
    CHORUS_METRICS_LISTEN=0.0.0.0:9464 \
    CHORUS_LOG_FORMAT=json \
    CHORUS_SERVER=127.0.0.1:7355
VOLUME ["/var/lib/chorus"]
EXPOSE 7355 9464
# The standard gRPC health service, through the server's own port (no token needed).
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 CMD ["chorus", "health"]
ENTRYPOINT ["chorus"]
CMD ["serve"]
