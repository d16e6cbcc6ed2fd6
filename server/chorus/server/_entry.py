"""The `chorus` console script: a clear message when the server extra is not installed.

The base install is the SDK alone (grpcio, protobuf), yet the script is installed with it;
without this launcher it would die with an ImportError traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from chorus.server.cli import main as cli_main
    except ImportError as exc:
        sys.exit(f"chorus: the server tools are not installed ({exc.name} is missing). Install them with "
                 "`pip install 'chorus-telemetry[server]'` (or `pip install -e '.[server]'` in a checkout); "
                 "the base install is the client SDK only.")
    cli_main()
