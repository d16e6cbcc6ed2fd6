"""Foreign lock holders for the busy-store tests: another program holding a store's locks.

Each holder is a separate Python process (not Chorus, not its flock): it takes its lock, prints
"holding" and sleeps until it is killed, so what Chorus meets is exactly what a backup tool, a
psql session or a stuck migration would leave.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

_HOLD = "print('holding', flush=True)\ntime.sleep(600)\n"

#: What each holder locks; `sys.argv[1]` is the SQLite file or the PostgreSQL URL.
HOLDERS = {
    # A write transaction on the SQLite file.
    "sqlite": "import sqlite3, sys, time\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "conn.execute('BEGIN IMMEDIATE')\n" + _HOLD,
    # A table lock that lets readers read but no one else write usage rows.
    "postgresql-table": "import psycopg, sys, time\n"
                        "conn = psycopg.connect(sys.argv[1])\n"
                        "conn.execute('LOCK TABLE usage IN EXCLUSIVE MODE')\n" + _HOLD,
    # A row lock on the batch id `sys.argv[2]` the next Report claims (an uncommitted insert).
    "postgresql-row": "import psycopg, sys, time\n"
                      "conn = psycopg.connect(sys.argv[1])\n"
                      "conn.execute(\"INSERT INTO batches (batch_id, received_at, digest) VALUES (%s, 0, '')\","
                      " (sys.argv[2],))\n" + _HOLD,
    # Every table of the schema, locked against writers (readers still read).
    "postgresql-all": "import psycopg, sys, time\n"
                      "conn = psycopg.connect(sys.argv[1])\n"
                      "tables = [t for t, in conn.execute('SELECT tablename FROM pg_tables "
                      "WHERE schemaname = current_schema()')]\n"
                      "conn.execute('LOCK TABLE ' + ', '.join(tables) + ' IN EXCLUSIVE MODE')\n" + _HOLD,
}


@contextlib.contextmanager
def holding(kind: str, target: str, *args: str) -> Iterator[None]:
    """While inside, a foreign process holds the `kind` lock (HOLDERS) on `target`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDERS[kind], target, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        yield
    finally:
        proc.kill()
        proc.wait(10)
