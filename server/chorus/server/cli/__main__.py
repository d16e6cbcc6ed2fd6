"""`python -m chorus.server.cli` runs the `chorus` command."""

from chorus.server.cli import main

main()
