"""Sample a local server's CPU and RSS (the process and its children) every half second."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

from bench.stats import ServerFigures
from bench.util import host_port, is_loopback, log

MIB = 1024 * 1024


def find_server_pid(base_url: str) -> int | None:
    """The process listening on the URL's port, when the URL's host is loopback."""
    host, port = host_port(base_url)
    if not is_loopback(host):
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError) as exc:
        log(f"server probe: cannot list sockets ({exc}); pass --server-pid")
        return None
    pids = {
        c.pid
        for c in connections
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    pids.discard(os.getpid())
    if not pids:
        return None
    # With several workers sharing the socket, report the topmost one (it has the others
    # as children, and children are included in every figure).
    for pid in sorted(pids):
        try:
            if psutil.Process(pid).ppid() not in pids:
                return pid
        except psutil.Error:
            continue
    return min(pids)


@dataclass
class Sample:
    t: float  # time.monotonic()
    cpu_s: float  # cumulative user+system seconds of the process tree
    rss: int  # bytes, summed over the process tree
    processes: int


class ServerProbe:
    """A background thread sampling process trees; figures are read per time window.

    Several roots (one per local node of a multi-node run) are summed."""

    def __init__(self, pids: list[int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.roots = [psutil.Process(pid) for pid in pids]
        self.samples: list[Sample] = []
        self._cpu: dict[int, float] = {}  # last cumulative CPU per pid (dead ones stay)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-probe", daemon=True)

    def start(self) -> ServerProbe:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> Sample | None:
        procs: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                for proc in (root, *root.children(recursive=True)):
                    procs[proc.pid] = proc
            except psutil.Error:
                continue
        rss = 0
        alive = 0
        for proc in procs.values():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
                self._cpu[proc.pid] = times.user + times.system
                alive += 1
            except psutil.Error:
                continue
        if alive == 0:
            return None
        sample = Sample(time.monotonic(), sum(self._cpu.values()), rss, alive)
        with self._lock:
            self.samples.append(sample)
        return sample

    def window(self, t0: float, t1: float) -> ServerFigures:
        """Average CPU% (100 = one core) and peak RSS between two time.monotonic() marks."""
        with self._lock:
            inside = [s for s in self.samples if t0 <= s.t <= t1]
            before = [s for s in self.samples if s.t < t0]
        if before:
            inside.insert(0, before[-1])
        if len(inside) < 2:
            now = self.sample()
            if now is not None:
                inside.append(now)
        figures = ServerFigures(pids=list(self.pids))
        if not inside:
            return figures
        figures.peak_rss_mib = round(max(s.rss for s in inside) / MIB, 1)
        figures.processes = inside[-1].processes
        first, last = inside[0], inside[-1]
        if last.t > first.t:
            figures.cpu_percent = round((last.cpu_s - first.cpu_s) / (last.t - first.t) * 100, 1)
        return figures

    def rss_now(self) -> int | None:
        sample = self.sample()
        return sample.rss if sample else None


class SelfMeter:
    """CPU% of the bench process itself between two marks (100 = one core)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()

    def _cpu(self) -> float:
        times = self.proc.cpu_times()
        return times.user + times.system

    def percent(self) -> float:
        elapsed = time.monotonic() - self.t0
        if elapsed <= 0:
            return 0.0
        return round((self._cpu() - self.cpu0) / elapsed * 100, 1)


def start_probe(
    server_pids: list[int] | None, base_urls: list[str], enabled: bool
) -> ServerProbe | None:
    """Probe `--server-pid`s, or the local listener of every loopback URL."""
    if not enabled:
        return None
    pids = list(server_pids or [])
    if not pids:
        for url in base_urls:
            pid = find_server_pid(url)
            if pid is not None and pid not in pids:
                pids.append(pid)
    if not pids:
        log(
            "server probe: no local server process found (remote URL?); no CPU/RSS figures. "
            "Pass --server-pid PID when the server runs on this machine."
        )
        return None
    try:
        probe = ServerProbe(pids).start()
    except psutil.Error as exc:
        log(f"server probe: cannot watch pid(s) {pids}: {exc}")
        return None
    names = ", ".join(f"{root.pid} ({root.name()})" for root in probe.roots)
    log(f"server probe: watching {names} and children")
    return probe
