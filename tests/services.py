"""Private PostgreSQL and Redis servers on loopback for the tests.

Plain helpers (no pytest fixtures): each starts a real server on a free 127.0.0.1 port and
returns a handle with ``.url``, ``.port`` and ``.stop()``; fault tests can ``.kill()`` /
``.stop()`` one and ``.start()`` it again on the same port. Every wait is bounded and a
timeout raises ``ServiceError`` with the tail of the service's log.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WAIT_SECONDS = 30.0

_issued_ports: set[int] = set()
_live: set[PostgresCluster | RedisServer] = set()


class ServiceError(RuntimeError):
    """A test service could not be started or did not answer in time."""


def find_free_port() -> int:
    """Return a free TCP port on 127.0.0.1, never the same one twice in this process."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port
    raise ServiceError("no free TCP port found on 127.0.0.1")


def _log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text) or "(empty log)"


def _wait_until(check: Callable[[], bool], what: str, log: Path | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{what}: not ready after {timeout:.0f} s; log {log}:\n" + _log_tail(log)
            )
        time.sleep(0.05)


def _run(
    cmd: list[str],
    what: str,
    log: Path | None = None,
    timeout: float = WAIT_SECONDS,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd="/", stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"{what}: {shlex.join(cmd)} timed out after {timeout:.0f} s; "
            f"log {log}:\n{_log_tail(log)}"
        ) from exc
    if check and proc.returncode != 0:
        raise ServiceError(
            f"{what}: {shlex.join(cmd)} exited {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}\nlog {log}:\n{_log_tail(log)}"
        )
    return proc


@atexit.register
def _stop_leftovers() -> None:
    """Stop whatever a crashed or careless test session left running."""
    for service in list(_live):
        with contextlib.suppress(Exception):
            service.stop()


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin_dir() -> Path:
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    candidates = [d for d in candidates if (d / "pg_ctl").exists()]

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d.parent.name)) or (0,)

    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
            "run `apt-get install postgresql` (or run scripts/test as root, which does)"
        )
    return max(candidates, key=version)


class PostgresCluster:
    """A private PostgreSQL cluster (trust auth, no fsync) on 127.0.0.1:PORT.

    As root the server runs as the ``postgres`` OS user; when that user cannot reach
    ``base_dir`` (pytest's tmp dirs are 0700) the data goes to a temp dir of its own,
    removed by ``close()``.
    """

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.bin_dir = _postgres_bin_dir()
        self.port = port or find_free_port()
        self._as_postgres = os.geteuid() == 0
        self._own_dir: Path | None = None
        self.data_dir = self._make_data_dir(Path(base_dir))
        self.log = self.data_dir / "log"
        # Unix socket path is limited to ~107 bytes; TCP is what clients use anyway.
        sock_dir = str(self.data_dir) if len(str(self.data_dir)) < 80 else ""
        self._options = (
            f"-p {self.port} -k {shlex.quote(sock_dir)} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._running = False
        self._pg(
            [
                "initdb",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--no-locale",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
            ],
            "initdb",
            timeout=120,
        )
        self.start()

    @property
    def url(self) -> str:
        """URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start (or restart after ``stop()``) on the same port."""
        self._pg(
            [
                "pg_ctl",
                "-w",
                "-t",
                str(int(WAIT_SECONDS)),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log),
                "start",
                "-o",
                self._options,
            ],
            "pg_ctl start",
            timeout=WAIT_SECONDS + 10,
        )
        self._running = True
        _live.add(self)

    def stop(self) -> None:
        """Stop at once (``-m immediate``): what an outage looks like to clients."""
        if not self._running:
            return
        self._pg(
            ["pg_ctl", "-w", "-D", str(self.data_dir), "-m", "immediate", "stop"],
            "pg_ctl stop",
            check=False,
        )
        self._running = False
        _live.discard(self)

    kill = stop

    def close(self) -> None:
        """Stop and remove the data directory if this object created it outside base_dir."""
        self.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        self.psql(f'CREATE DATABASE "{_check_ident(name)}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{_check_ident(name)}" WITH (FORCE)')

    def psql(self, sql: str) -> str:
        """Run one SQL command in the ``postgres`` database; return psql's output."""
        psql = self.bin_dir / "psql"
        exe = str(psql) if psql.exists() else shutil.which("psql") or "psql"
        proc = _run(
            [
                exe,
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            f"psql {sql!r}",
            self.log,
        )
        return proc.stdout

    def _make_data_dir(self, base_dir: Path) -> Path:
        data = base_dir / f"pg-{self.port}"
        data.mkdir(parents=True, exist_ok=True)
        if not self._as_postgres:
            return data
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        reachable = (
            _run(
                ["runuser", "-u", "postgres", "--", "test", "-w", str(data), "-a", "-x", str(data)],
                "runuser",
                check=False,
            ).returncode
            == 0
        )
        if reachable:
            return data
        data.rmdir()
        self._own_dir = Path(tempfile.mkdtemp(prefix="bloomtext-pg-"))
        os.chown(self._own_dir, pw.pw_uid, pw.pw_gid)
        return self._own_dir

    def _pg(
        self, cmd: list[str], what: str, timeout: float = WAIT_SECONDS, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        full = [str(self.bin_dir / cmd[0]), *cmd[1:]]
        if self._as_postgres:
            full = ["runuser", "-u", "postgres", "--", *full]
        return _run(full, f"PostgreSQL {what}", self.log, timeout=timeout, check=check)


def _check_ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


# --------------------------------------------------------------------------- Redis


def _redis_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} not found: run `apt-get install redis-server` "
            "(or run scripts/test as root, which does)"
        )
    return path


def _redis_pid(port: int) -> int | None:
    """PING then ``INFO server`` over a raw socket: the pid of whoever answers, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\nINFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"+PONG"):
        return None
    match = re.search(rb"process_id:(\d+)", data)
    return int(match.group(1)) if match else None


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:PORT that keeps nothing on disk."""

    def __init__(
        self,
        port: int | None = None,
        *,
        log_dir: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or find_free_port()
        self._tmp_dir: str | None = None
        if log_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="bloomtext-redis-")
            log_dir = Path(self._tmp_dir)
        self.log = Path(log_dir) / f"redis-{self.port}.log"
        self._args = [
            _redis_binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(log_dir),
            *(extra_args or []),
        ]
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port and wait for PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                self._args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/"
            )
        _live.add(self)

        def ready() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"redis-server on port {self.port} exited with "
                    f"{self._proc.returncode}; log {self.log}:\n" + _log_tail(self.log)
                )
            # Checking the pid tells our server from another one already on this port.
            return _redis_pid(self.port) == self._proc.pid

        _wait_until(ready, f"redis-server on port {self.port}", self.log, WAIT_SECONDS)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word."""
        self._terminate(signal.SIGKILL)

    def stop(self) -> None:
        self._terminate(signal.SIGTERM)
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        _live.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class RedisCluster:
    """A Redis Cluster of ``nodes`` masters (no replicas) on 127.0.0.1."""

    def __init__(self, base_dir: Path, nodes: int = 3) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(nodes):
                port, bus_port = find_free_port(), find_free_port()
                self.nodes.append(
                    RedisServer(
                        port,
                        log_dir=self.base_dir,
                        extra_args=[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(self.base_dir / f"nodes-{port}.conf"),
                            "--cluster-port",
                            str(bus_port),
                        ],
                    )
                )
            self._create()
        except BaseException:
            self.stop()
            raise

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _create(self) -> None:
        cli = _redis_binary("redis-cli")
        log = self.base_dir / f"redis-{self.port}.log"
        _run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            "redis-cli --cluster create",
            log,
            timeout=60,
        )

        def all_ok() -> bool:
            for node in self.nodes:
                info = _run(
                    [cli, "-h", "127.0.0.1", "-p", str(node.port), "cluster", "info"],
                    "redis-cli cluster info",
                    node.log,
                    check=False,
                ).stdout
                if "cluster_state:ok" not in info:
                    return False
            return True

        _wait_until(all_ok, f"Redis Cluster on ports {self.ports}", log, WAIT_SECONDS)


# -- databases on a PostgreSQL server (asyncpg) --------------------------------


async def create_database(base_url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(base_url + "/postgres", timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{base_url}/{name}"


async def drop_database(base_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url + "/postgres", timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
