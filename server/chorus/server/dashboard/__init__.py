"""The Chorus web dashboard: a separate process that reads the gRPC API with each person's own token."""

from chorus.server.dashboard.gateway import Gateway
from chorus.server.dashboard.web import create_app

__all__ = ["Gateway", "create_app"]
