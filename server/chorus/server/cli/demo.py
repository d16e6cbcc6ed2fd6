"""`chorus demo`: a real server, a generated roster, simulated AI tools through the real SDK."""

from __future__ import annotations


def demo() -> None:
    """Run the end-to-end demo in a temporary data directory."""
    raise NotImplementedError
