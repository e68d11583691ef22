"""Real servers on free loopback ports, for the tests and the benchmarks: `chroma run`, and
PostgreSQL from Debian's `postgresql` package in a fresh cluster. Each is a context manager
that starts the server, waits until it answers, and stops it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(command: list[str], health: str, data: Path, seconds: float = 120) -> Iterator[None]:
    """Run ``command`` (a server) with its output in ``data``/server.log, wait until ``health``
    answers, then stop it when the block ends."""
    with (data / "server.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + seconds
        while True:
            try:
                urllib.request.urlopen(health, timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"{command[0]} did not start; see {data}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@contextmanager
def chroma_server(data: Path) -> Iterator[str]:
    """`chroma run` with its data in ``data``; yields its URL."""
    port = free_port()
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    url = f"http://127.0.0.1:{port}"
    command = [
        chroma,
        "run",
        "--path",
        str(data / "db"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with process(command, f"{url}/api/v2/heartbeat", data, seconds=60):
        yield url


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of its own, trusting local connections; yields its SQLAlchemy URL.
    It runs as the ``postgres`` user when this runs as root, since PostgreSQL refuses root."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed; `make install` installs Debian's package")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="hearth-postgres-"))  # a folder the server may enter
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()

    def run(*command: str | Path) -> None:
        subprocess.run([*as_postgres, *map(str, command)], check=True, capture_output=True)

    run(bin_dir / "initdb", "-D", data, "-U", "hearth", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", root / "server.log", "-w", "start")
    try:
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "hearth", "hearth")
        yield f"postgresql+psycopg://hearth@127.0.0.1:{port}/hearth"
    finally:
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
