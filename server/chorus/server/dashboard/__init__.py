"""The Chorus web dashboard: a separate process that reads the gRPC API with each person's own token."""

from chorus.server.dashboard.app import create_app
from chorus.server.dashboard.gateway import Gateway

__all__ = ["Gateway", "create_app"]
