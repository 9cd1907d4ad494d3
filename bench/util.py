"""Small helpers shared by the bench modules: URLs, progress lines, file limits."""

from __future__ import annotations

import ipaddress
import re
import resource
import sys
import time
from urllib.parse import urlsplit

OUT_DIR_NAME = "out"


class BenchError(Exception):
    """An error the CLI reports in one line (no traceback) before exiting with status 1."""


def split_urls(values: list[str] | None, default: str) -> list[str]:
    """`--url` may be repeated and/or comma-separated; trailing slashes are dropped."""
    urls: list[str] = []
    for value in values or [default]:
        for part in value.split(","):
            part = part.strip().rstrip("/")
            if not part:
                continue
            parts = urlsplit(part)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise BenchError(f"--url {part!r}: expected http(s)://HOST[:PORT]")
            urls.append(part)
    if not urls:
        raise BenchError("no --url given")
    return urls


def origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def ws_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{path}/ws"


def host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def host_slug(base_url: str) -> str:
    """A file-name-safe name for the deployment, e.g. `127.0.0.1_8011`."""
    host, port = host_port(base_url)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{host}_{port}")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; fail if that is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed + 1024)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log(f"warning: could not raise the open-file limit to {target}: {exc}")
    if soft < needed:
        raise BenchError(
            f"the open-file limit is {soft} (hard limit {hard}) but this run needs about "
            f"{needed} descriptors; raise it (e.g. `ulimit -n {needed + 1024}` as root, or "
            "LimitNOFILE in systemd) and retry"
        )
    return soft, hard


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Throttled progress lines on stderr: at most one per `every` seconds, plus the last."""

    def __init__(self, label: str, total: int, every: float = 1.0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.every = every
        self._last = 0.0
        self._start = time.monotonic()

    def advance(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.done == self.total or now - self._last >= self.every:
            self._last = now
            elapsed = now - self._start
            suffix = f" {extra}" if extra else ""
            log(f"  {self.label}: {self.done}/{self.total} ({elapsed:.1f} s){suffix}")
