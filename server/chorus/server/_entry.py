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
        # Chorus is not on a package registry: name only installs from its own source tree.
        sys.exit(f"chorus: the server tools are not installed ({exc.name} is missing). Install them from "
                 "the Chorus source tree: `pip install '.[server]'` in a checkout, or a wheel built from it "
                 "(`python -m build`, then `pip install 'dist/chorus_telemetry-VERSION-py3-none-any.whl[server]'`); "
                 "the base install is the client SDK only.")
    cli_main()
