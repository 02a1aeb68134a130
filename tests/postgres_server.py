"""A throwaway PostgreSQL server for the tests and the replica benchmark.

Debian's server binaries (``/usr/lib/postgresql/<version>/bin``; the
``postgresql`` package is installed with apt-get when they are missing and
we are root), ``initdb`` into a temporary directory, run as an unprivileged
user (``nobody`` through ``setpriv`` when we are root: PostgreSQL refuses to
run as root), listening on 127.0.0.1 on a free port only, with trust
authentication for the user ``thrifty``.

    python -m tests.postgres_server start [--durable]   # prints shell exports (URL and directory)
    python -m tests.postgres_server stop DIR             # stops that server and removes DIR

``scripts/test.sh`` starts one for the whole suite and exports its URL as
``THRIFTY_TEST_POSTGRES_URL``; the tests' fixture starts its own the same
way when the variable is unset. Tests run with ``fsync=off`` (a killed
*client* is what they test; the server is never killed); ``--durable`` keeps
PostgreSQL's default durability, for benchmarks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

URL_ENV = "THRIFTY_TEST_POSTGRES_URL"
DIR_ENV = "THRIFTY_TEST_POSTGRES_DIR"
USER = "thrifty"
NOBODY = 65534


class PostgresUnavailable(RuntimeError):
    pass


def server_bin() -> Path:
    """The newest installed PostgreSQL server's bin directory (installing the package if none is)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not found:
        if os.geteuid() != 0:
            raise PostgresUnavailable("PostgreSQL's server is not installed (/usr/lib/postgresql/*/bin/initdb): "
                                      "apt-get install postgresql")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise PostgresUnavailable(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        return server_bin()
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> list[str]:
    """The command prefix that runs a server binary as an unprivileged user."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@dataclass
class PostgresServer:
    url: str  # the server's "postgres" database, as user thrifty
    directory: Path | None  # None: a server someone else started (and stops)
    port: int

    @classmethod
    def from_url(cls, url: str) -> "PostgresServer":
        from urllib.parse import urlsplit

        return cls(url, None, urlsplit(url).port or 5432)

    def database_url(self, name: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self) -> None:
        if self.directory is not None:
            stop(self.directory)


def start(*, durable: bool = False, parent: str | None = None) -> PostgresServer:
    """Initialise and start a server in a new temporary directory; waits until it accepts connections."""
    bin_dir = server_bin()
    directory = Path(tempfile.mkdtemp(prefix="thrifty-pg-", dir=parent))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(directory, NOBODY, NOBODY)
    data = directory / "data"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "HOME": str(directory)}
    try:
        _run([*_as_server_user(), str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
              "-E", "UTF8", "--locale=C", "--no-sync"], env)
        options = ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=300"]
        if not durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        for _ in range(5):  # the free port may be taken by someone else before the server binds it
            port = _free_port()
            proc = subprocess.run(
                [*_as_server_user(), str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"),
                 "-w", "-t", "60", "-o", " ".join([*options, "-p", str(port)]), "start"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if proc.returncode == 0:
                server = PostgresServer(f"postgresql://{USER}@127.0.0.1:{port}/postgres", directory, port)
                _wait_accepting(server.url)
                return server
        log = (directory / "server.log").read_text(errors="replace")[-2000:] if (directory / "server.log").exists() else ""
        raise PostgresUnavailable(f"PostgreSQL did not start: {proc.stdout.strip()}\n{log}")
    except BaseException:
        stop(directory)
        raise


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(cmd)} failed:\n{proc.stdout.strip()[-2000:]}")


def _wait_accepting(url: str, timeout_s: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(directory: str | Path) -> None:
    """Stop the server of ``directory`` (fast shutdown) and remove the directory."""
    directory = Path(directory)
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        try:
            bin_dir = server_bin()
            subprocess.run([*_as_server_user(), str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except PostgresUnavailable:
            pass
    shutil.rmtree(directory, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start", help="start a server; print shell exports of its URL and directory")
    up.add_argument("--durable", action="store_true", help="keep PostgreSQL's default durability (fsync on)")
    down = sub.add_parser("stop", help="stop the server of DIR and remove DIR")
    down.add_argument("directory")
    args = ap.parse_args(argv)
    if args.command == "stop":
        stop(args.directory)
        return 0
    try:
        server = start(durable=args.durable)
    except PostgresUnavailable as exc:
        print(f"cannot start PostgreSQL for the tests: {exc}", file=sys.stderr)
        return 1
    print(f"export {URL_ENV}={server.url} {DIR_ENV}={server.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
