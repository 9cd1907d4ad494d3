"""`python -m bench cluster`: N nodes on PostgreSQL + Redis, K load processes, rising rates.

For a machine with more cores than this project's 2: every node is pinned to a core of
its own, every load process (one bench process saturates near 15,000 deliveries/s) to
another, and the clients of every conversation are spread over all nodes. Per step it
reports what the load processes measured, merged, and what the cluster did meanwhile:
the share of `pg_stat_activity` samples with a session waiting on a `Lock`, and each
node's send-lock hold time and round trips (from `/metrics`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

from bench.stats import merged_percentile
from bench.util import log, raise_nofile

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
HOLD_METRIC = "bloomtext_send_lock_hold_seconds"


@dataclass
class StepRow:
    nodes: int
    target: float
    delivered_per_s: float = 0.0
    acked_sends_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    unacked: int = 0
    lost: int = 0
    rejected: int = 0
    lock_wait_share: float | None = None  # samples with a session waiting on a Lock
    active_sessions: float | None = None  # mean active sessions per sample
    hold_p50_ms: float | None = None
    hold_p99_ms: float | None = None
    round_trips_per_hold: float | None = None
    batches: int = 0
    gaps_seen: int = 0  # events that reached a node ahead of a missing one, all nodes
    gap_reads: int = 0  # of those, read from storage (not through the broker in time)
    node_cpu_percent: list[float] = field(default_factory=list)
    held: bool = False
    verdict: str = ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench cluster",
        description="Start N nodes on PostgreSQL + Redis, drive them with K load processes "
        "at rising rates and print one table.",
    )
    p.add_argument("--nodes", default="1", help="node counts to run, e.g. 1,2,4 (default 1)")
    p.add_argument("--rates", help="target deliveries/s per step, e.g. 8000,16000,24000 "
                   "(default: --start, --step, --max)")
    p.add_argument("--start", type=float, default=4000.0)
    p.add_argument("--step", type=float, default=4000.0)
    p.add_argument("--max", type=float, default=96000.0)
    p.add_argument("--all-steps", action="store_true",
                   help="run every rate even after a step did not hold")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per step (default 10)")
    p.add_argument("--settle", type=float, default=2.0, help="pause between steps (default 2)")
    p.add_argument("--load-procs", type=int, default=1, help="load processes K (default 1)")
    p.add_argument("--clients", type=int, default=120, help="clients per load process")
    p.add_argument("--rooms", type=int, default=12, help="conversations per load process")
    p.add_argument("--msgpack", action="store_true")
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bloomtext_bench",
                   help="PostgreSQL database for the nodes (created when missing); "
                   "?maxsize=N sets each node's pool")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--base-port", type=int, default=8100, help="node i listens on base+i")
    p.add_argument("--node-cores", help="cores for the nodes, round-robin, e.g. 0-3 or 0,2 "
                   "(default: one core each from 0)")
    p.add_argument("--load-cores", help="cores for the load processes, round-robin "
                   "(default: the cores after the nodes', else the last core)")
    p.add_argument("--lanes", type=int, help="BLOOMTEXT_SEND_LANES for every node")
    p.add_argument("--server-root", type=Path, default=ROOT,
                   help="checkout whose server the nodes run (to compare two versions)")
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for every node (repeatable)")
    p.add_argument("--p99-limit", type=float, default=200.0)
    p.add_argument("--json", type=Path, help="also write every step as JSON")
    p.add_argument("--timeout", type=float, default=3600.0, help="bound on the whole run")
    return p


def cores(spec: str | None) -> list[int]:
    if not spec:
        return []
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            out.extend(range(int(low), int(high) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def default_cores(nodes: int, procs: int) -> tuple[list[int], list[int]]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= nodes + procs:
        return available[:nodes], available[nodes : nodes + procs]
    if len(available) >= 2:  # a small machine: nodes share the first cores, load the last
        return available[:-1], available[-1:]
    return available, available


def plain_postgres_url(url: str) -> str:
    """asyncpg's form of a tortoise URL: no pool options in the query string."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


async def ensure_database(url: str) -> None:
    import asyncpg

    plain = plain_postgres_url(url)
    name = urlsplit(plain).path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise SystemExit(f"--database-url: not a plain database name: {name!r}")
    maintenance = plain.rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(maintenance, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            log(f"created database {name}")
    finally:
        await conn.close()


class Nodes:
    """N `python -m server serve` processes, each pinned to a core."""

    def __init__(self, args: argparse.Namespace, count: int, node_cores: list[int],
                 token: str, logs: Path) -> None:
        self.ports = [args.base_port + i for i in range(count)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.token = token
        self.procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ)
        env.update(
            DATABASE_URL=args.database_url,
            REDIS_URL=args.redis_url,
            SIGNUP_OPEN="true",
            BLOOMTEXT_LOG_LEVEL="warning",
            METRICS_TOKEN=token,
            ALLOWED_ORIGINS=",".join(self.urls),
            PYTHONPATH=str(args.server_root),
        )
        if args.lanes:
            env["BLOOMTEXT_SEND_LANES"] = str(args.lanes)
        for item in args.node_env:
            name, _, value = item.partition("=")
            env[name] = value
        self._env = env
        self._cores = node_cores
        self._root = args.server_root
        self._logs = logs

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "server", "migrate"], env=self._env,
                       cwd=self._root, check=True, timeout=300, stdout=subprocess.DEVNULL)

    async def start(self) -> None:
        for i, port in enumerate(self.ports):
            env = {**self._env, "PORT": str(port)}
            cmd = [sys.executable, "-m", "server", "serve"]
            if self._cores:
                cmd = ["taskset", "-c", str(self._cores[i % len(self._cores)]), *cmd]
            out = open(self._logs / f"node-{port}.log", "ab")  # noqa: SIM115 (kept by Popen)
            self.procs.append(subprocess.Popen(cmd, env=env, cwd=self._root, stdout=out,
                                               stderr=subprocess.STDOUT,
                                               preexec_fn=_raise_nofile))
        async with httpx.AsyncClient(timeout=2) as http:
            for url, proc in zip(self.urls, self.procs, strict=True):
                deadline = time.monotonic() + 60
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"node {url} exited {proc.returncode}: see {self._logs}")
                    try:
                        if (await http.get(url + "/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"node {url} not ready after 60 s: see {self._logs}")
                    await asyncio.sleep(0.2)
        log(f"{len(self.urls)} node(s) ready: {', '.join(self.urls)}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []

    def cpu_seconds(self) -> list[float]:
        out = []
        for proc in self.procs:
            try:
                times = psutil.Process(proc.pid).cpu_times()
                out.append(times.user + times.system)
            except psutil.Error:
                out.append(0.0)
        return out

    async def hold_figures(self) -> dict[str, Any]:
        """The send-lock histogram and counters, summed over the nodes."""
        buckets: dict[float, float] = {}
        totals = {"holds": 0.0, "round_trips": 0.0, "batches": 0.0, "gaps": 0.0,
                  "gap_reads": 0.0}
        names = {f"{HOLD_METRIC}_count": "holds",
                 "bloomtext_send_lock_round_trips_total": "round_trips",
                 "bloomtext_send_batches_total": "batches",
                 "bloomtext_hub_gaps_total": "gaps",
                 "bloomtext_hub_gap_reads_total": "gap_reads"}
        async with httpx.AsyncClient(timeout=5) as http:
            for url in self.urls:
                r = await http.get(url + "/metrics",
                                   headers={"Authorization": f"Bearer {self.token}"})
                r.raise_for_status()
                for line in r.text.splitlines():
                    match = re.match(rf'{HOLD_METRIC}_bucket{{le="([^"]+)"}} (\S+)', line)
                    if match:
                        le = math.inf if match.group(1) == "+Inf" else float(match.group(1))
                        buckets[le] = buckets.get(le, 0.0) + float(match.group(2))
                        continue
                    name, _, value = line.partition(" ")
                    if name in names:
                        totals[names[name]] += float(value)
        return {"buckets": buckets, **totals}


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket)."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            span = count - low_count
            return low_bound + (bound - low_bound) * ((rank - low_count) / span if span else 0)
        low_bound, low_count = bound, count
    return None


async def sample_locks(database_url: str, stop: asyncio.Event) -> tuple[int, int, int]:
    """Sample pg_stat_activity every 100 ms until `stop`: (samples, samples with a session
    waiting on a Lock, active sessions summed over the samples)."""
    import asyncpg

    conn = await asyncpg.connect(plain_postgres_url(database_url), timeout=10)
    samples = waiting = active = 0
    try:
        while not stop.is_set():
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting,"
                " count(*) FILTER (WHERE state = 'active') AS active"
                " FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
            samples += 1
            waiting += row["waiting"] > 0
            active += row["active"]
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
    finally:
        await conn.close()
    return samples, waiting, active


def bench_command(args: argparse.Namespace, k: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "bench", *more, "--clients", str(args.clients),
            "--rooms", str(args.rooms), "--state", str(OUT / f"cluster-{k}.json"),
            "--no-probe", *(["--msgpack"] if args.msgpack else [])]


async def run_process(cmd: list[str], core: int | None, timeout: float) -> tuple[int, str]:
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout:.0f} s: {shlex.join(cmd)}"
    return proc.returncode or 0, out.decode(errors="replace")


async def run_step(args: argparse.Namespace, nodes: Nodes, load_cores: list[int],
                   rate: float, tmp: Path) -> StepRow:
    row = StepRow(nodes=len(nodes.urls), target=rate)
    urls = ",".join(nodes.urls)
    start_at = time.time() + 3.0  # time for every load process to connect
    outputs = [tmp / f"step-{len(nodes.urls)}-{int(rate)}-{k}.json"
               for k in range(args.load_procs)]
    runs = [
        run_process(
            bench_command(args, k, "rooms", "--url", urls, "--rate", f"{rate / args.load_procs:g}",
                          "--duration", f"{args.duration:g}", "--start-at", f"{start_at:.3f}",
                          "--p99-limit", f"{args.p99_limit:g}", "--json", str(out)),
            load_cores[k % len(load_cores)] if load_cores else None,
            args.duration + 120,
        )
        for k, out in enumerate(outputs)
    ]
    before_hold = await nodes.hold_figures()
    stop = asyncio.Event()
    cpu: list[list[float]] = []

    async def sample_during_sends() -> tuple[int, int, int]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        sampler = asyncio.create_task(sample_locks(args.database_url, stop))
        cpu.append(nodes.cpu_seconds())
        await asyncio.sleep(args.duration)
        cpu.append(nodes.cpu_seconds())
        stop.set()
        return await sampler

    sampled, *finished = await asyncio.gather(sample_during_sends(), *runs)
    after_hold = await nodes.hold_figures()

    results = []
    for (code, text), out in zip(finished, outputs, strict=True):
        if code != 0 or not out.exists():
            row.verdict = f"a load process failed ({code}): {text.strip()[-300:]}"
            return row
        results.append(json.loads(out.read_text())["result"]["steps"][0])
    row.delivered_per_s = round(sum(r["deliveries_per_s"] for r in results), 1)
    row.acked_sends_per_s = round(sum(r["acked_sends_per_s"] for r in results), 1)
    hists = [r["latency_ms"]["hist"] for r in results]
    row.p50_ms = merged_percentile(hists, 50)
    row.p99_ms = merged_percentile(hists, 99)
    row.unacked = sum(r["unacked"] for r in results)
    row.lost = sum(r["losses"] for r in results)
    row.rejected = sum(r["rejected"] for r in results)
    samples, waiting, active = sampled
    if samples:
        row.lock_wait_share = round(waiting / samples, 3)
        row.active_sessions = round(active / samples, 2)
    delta = {le: after_hold["buckets"].get(le, 0.0) - before_hold["buckets"].get(le, 0.0)
             for le in after_hold["buckets"]}
    for q, name in ((0.5, "hold_p50_ms"), (0.99, "hold_p99_ms")):
        value = histogram_quantile(q, delta)
        setattr(row, name, None if value is None else round(value * 1000, 3))
    holds = after_hold["holds"] - before_hold["holds"]
    if holds:
        row.round_trips_per_hold = round((after_hold["round_trips"] -
                                          before_hold["round_trips"]) / holds, 2)
    row.batches = int(after_hold["batches"] - before_hold["batches"])
    row.gaps_seen = int(after_hold["gaps"] - before_hold["gaps"])
    row.gap_reads = int(after_hold["gap_reads"] - before_hold["gap_reads"])
    row.node_cpu_percent = [round(100 * (a - b) / args.duration, 1)
                            for a, b in zip(cpu[1], cpu[0], strict=True)]
    problems = []
    if row.p99_ms > args.p99_limit:
        problems.append(f"p99 > {args.p99_limit:g} ms")
    if row.lost or row.unacked or row.rejected:
        problems.append("lost, unacked or rejected sends")
    if row.delivered_per_s < 0.9 * rate:
        problems.append("< 90% of the target")
    row.held = not problems
    row.verdict = "held" if row.held else "; ".join(problems)
    return row


def format_table(rows: list[StepRow]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    lines = [
        "| nodes | target deliveries/s | delivered/s | p50 / p99 ms | unacked or lost "
        "| samples waiting on a Lock | lock hold p50 / p99 ms | round trips per hold "
        "| gaps (read from storage) | node CPU % | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        share = "-" if r.lock_wait_share is None else f"{100 * r.lock_wait_share:.0f}%"
        lines.append(
            f"| {r.nodes} | {r.target:,.0f} | {r.delivered_per_s:,.0f} | {r.p50_ms:g} / "
            f"{r.p99_ms:g} | {r.unacked} unacked, {r.lost} lost | {share} | "
            f"{ms(r.hold_p50_ms)} / {ms(r.hold_p99_ms)} | {ms(r.round_trips_per_hold)} | "
            f"{r.gaps_seen:,} ({r.gap_reads:,}) | "
            f"{' + '.join(f'{c:.0f}' for c in r.node_cpu_percent) or '-'} | {r.verdict} |"
        )
    return "\n".join(lines)


def step_rates(args: argparse.Namespace) -> list[float]:
    if args.rates:
        return [float(r) for r in args.rates.split(",") if r.strip()]
    rates, rate = [], args.start
    while rate <= args.max + 1e-9:
        rates.append(rate)
        rate += args.step
    return rates


async def run(args: argparse.Namespace) -> list[StepRow]:
    node_counts = [int(n) for n in args.nodes.split(",")]
    await ensure_database(args.database_url)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=OUT))
    token = secrets.token_urlsafe(24)
    rows: list[StepRow] = []
    for count in node_counts:
        node_cores, load_cores = default_cores(count, args.load_procs)
        node_cores = cores(args.node_cores) or node_cores
        load_cores = cores(args.load_cores) or load_cores
        nodes = Nodes(args, count, node_cores, token, tmp)
        nodes.migrate()
        await nodes.start()
        try:
            log(f"setup of {args.load_procs} load process(es) "
                f"({args.clients} clients, {args.rooms} conversations each)")
            for k in range(args.load_procs):
                code, text = await run_process(
                    bench_command(args, k, "setup", "--url", nodes.urls[0]), None, 1800
                )
                if code != 0:
                    raise SystemExit(f"setup {k} failed: {text.strip()[-500:]}")
            for rate in step_rates(args):
                log(f"{count} node(s): {rate:,.0f} deliveries/s for {args.duration:g} s")
                row = await run_step(args, nodes, load_cores, rate, tmp)
                rows.append(row)
                log(f"  -> {row.delivered_per_s:,.0f}/s, p99 {row.p99_ms:g} ms, "
                    f"hold p99 {row.hold_p99_ms} ms, lock waits "
                    f"{row.lock_wait_share}: {row.verdict}")
                if not row.held and not args.all_steps:
                    break
                await asyncio.sleep(args.settle)
        finally:
            nodes.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 2 * args.rooms:
        log("error: every conversation needs at least 2 members: --clients >= 2 x --rooms")
        return 2
    raise_nofile(args.clients * args.load_procs + 256)
    try:
        rows = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except TimeoutError:
        log(f"error: stopped after --timeout {args.timeout:g} s")
        return 3
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"params": {k: str(v) for k, v in vars(args).items()},
             "cpus": sorted(os.sched_getaffinity(0)), "steps": [asdict(r) for r in rows]},
            indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0
