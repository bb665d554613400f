"""A private PgBouncer in transaction mode, in front of the test PostgreSQL server.

``PgBouncer(server_url, database)`` writes a configuration for one database
(``pool_mode = transaction``, trust authentication, a free port on 127.0.0.1, no Unix
socket) and runs ``pgbouncer`` from the Debian package; ``.url`` is what a client
connects to. PgBouncer refuses to run as root: under root it runs as ``postgres``, as
the private PostgreSQL server does (``tests/postgres_server.py``), in a directory of its
own under the system's temporary directory (pytest's are closed to other users).

``ignore_startup_parameters = options``: Conveyor sends its session settings in the
``options`` startup parameter, which PgBouncer otherwise refuses (docs/brokers.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .redis_server import free_port


def pgbouncer_or_skip() -> str:
    # Debian installs it in /usr/sbin, which a non-root user's PATH may lack.
    found = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if found is None:
        reason = "pgbouncer is not installed (Debian package pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class PgBouncer:
    def __init__(self, server_url: str, database: str) -> None:
        self.binary = pgbouncer_or_skip()
        self.directory = directory = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
        self.port = free_port()
        server = urlsplit(server_url)
        self.user = server.username or "postgres"
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"
        self.ini = directory / "pgbouncer.ini"
        (directory / "users.txt").write_text(f'"{self.user}" ""\n')
        self.ini.write_text(
            "[databases]\n"
            f"{database} = host={server.hostname} port={server.port or 5432} dbname={database}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {directory / 'users.txt'}\n"
            "pool_mode = transaction\n"
            "default_pool_size = 4\n"
            "max_client_conn = 200\n"
            "ignore_startup_parameters = options,extra_float_digits\n"
            f"logfile = {directory / 'pgbouncer.log'}\n"
            f"pidfile = {directory / 'pgbouncer.pid'}\n"
        )
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")
            for name in ("users.txt", "pgbouncer.ini"):
                shutil.chown(directory / name, "postgres")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import psycopg

        self.proc = subprocess.Popen([*self._as, self.binary, str(self.ini)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_file = self.directory / "pgbouncer.log"
                    log = log_file.read_text() if log_file.exists() else ""
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # runuser passes SIGTERM on to pgbouncer; SIGINT would wait for clients to leave.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.directory, ignore_errors=True)
