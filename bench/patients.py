"""`python -m bench.patients import|search`: the patient directory under load.

- `import --rows N`: signs up a fresh organisation on its trial, uploads an N-row CSV
  (streamed from a temporary file), and times it until the job is done. With
  `--server-pid` (a server on this machine) it samples the server's resident memory
  every 50 ms during the import and reports the baseline and the peak.
- `search --patients N --queries Q`: imports N patients into a fresh organisation, then
  runs Q directory searches one after another (last-name fragments, phone digits, MRNs,
  DOBs, and words that match nothing) and reports latency percentiles.

Everything is bounded: each import waits at most `--timeout` seconds, searches stop at
`--queries` or `--timeout`. Works against any deployment whose signup is open.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

LAST = ["Lopez", "Nguyen", "Smith", "Okafor", "Kowalski", "Haddad", "Tanaka", "Moreau",
        "Silva", "Johansson", "Patel", "Murphy", "Cohen", "Rossi", "Kim", "Novak"]
FIRST = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade",
         "Kofi", "Lena", "Milo", "Nora", "Omar", "Pia"]


def write_csv(path: Path, rows: int, seed: int) -> None:
    rnd = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["First Name", "Last Name", "Date of birth", "MRN", "Email", "Mobile"])
        for i in range(rows):
            last = rnd.choice(LAST) + ("" if i % 3 else f"-{rnd.choice(LAST)}")
            out.writerow([
                rnd.choice(FIRST), last,
                f"{rnd.randint(1, 12):02d}/{rnd.randint(1, 28):02d}/{rnd.randint(1930, 2020)}",
                f"B{seed % 1000:03d}-{i:07d}",
                f"p{i}.{seed}@example.org",
                f"+1415555{i:04d}" if i < 10000 else "",  # 10,000 distinct valid phones
            ])


async def stream_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(256 * 1024):
            yield chunk


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def fresh_org(http: httpx.AsyncClient) -> dict[str, str]:
    email = f"bench-{secrets.token_hex(5)}@example.org"
    r = await http.post("/api/v1/signup", json={"org_name": "Bench clinic", "name": "Bench",
                                                 "email": email,
                                                 "password": secrets.token_urlsafe(12)})
    if r.status_code != 201:
        raise SystemExit(f"signup failed ({r.status_code}): {r.text[:200]}")
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await http.post("/api/v1/org/trial", headers=headers)
    if r.status_code != 200:
        raise SystemExit(f"starting the trial failed ({r.status_code}): {r.text[:200]}")
    return headers


async def run_import(http: httpx.AsyncClient, headers: dict[str, str], rows: int, seed: int,
                     timeout: float, pid: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patients.csv"
        write_csv(path, rows, seed)
        size = path.stat().st_size
        samples: list[float] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mib(pid))  # type: ignore[arg-type]
                await asyncio.sleep(0.05)

        baseline = rss_mib(pid) if pid else None
        sampler = asyncio.create_task(sample()) if pid else None
        started = time.perf_counter()
        r = await http.post("/api/v1/patients/import", content=stream_file(path),
                            headers={**headers, "Content-Type": "text/csv"})
        if r.status_code != 202:
            raise SystemExit(f"import refused ({r.status_code}): {r.text[:300]}")
        accepted = time.perf_counter() - started
        job_id = r.json()["job_id"]
        deadline = started + timeout
        while True:
            job = (await http.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
            if job["status"] != "running":
                break
            if time.perf_counter() > deadline:
                raise SystemExit(f"the import did not finish in {timeout:.0f} s: {job}")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        stop.set()
        if sampler:
            await sampler
    return {
        "rows": rows, "bytes": size, "status": job["status"], "created": job["created"],
        "updated": job["updated"], "rejected": job["rejected"],
        "upload_s": round(accepted, 2), "total_s": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed),
        "rss_baseline_mib": round(baseline, 1) if baseline else None,
        "rss_peak_mib": round(max(samples), 1) if samples else None,
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run_search(http: httpx.AsyncClient, headers: dict[str, str], queries: int,
                     seed: int, timeout: float) -> dict[str, Any]:
    rnd = random.Random(seed + 1)
    terms: list[tuple[str, str]] = []
    for _ in range(queries):
        kind = rnd.randrange(5)
        if kind == 0:
            terms.append(("name", rnd.choice(LAST)[:rnd.randint(3, 6)].lower()))
        elif kind == 1:
            terms.append(("phone", f"415555{rnd.randrange(10000):04d}"))
        elif kind == 2:
            terms.append(("mrn", f"B{seed % 1000:03d}-{rnd.randrange(100000):07d}"))
        elif kind == 3:
            terms.append(("dob", f"{rnd.randint(1930, 2020)}-{rnd.randint(1, 12):02d}"))
        else:
            terms.append(("none", secrets.token_hex(4)))  # matches nothing
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {}
    deadline = time.perf_counter() + timeout
    for kind, term in terms:
        if time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        r = await http.get("/api/v1/patients", params={"q": term, "limit": 50}, headers=headers)
        latencies.append((time.perf_counter() - t0) * 1000)
        by_kind.setdefault(kind, []).append(latencies[-1])
        if r.status_code != 200:
            raise SystemExit(f"search failed ({r.status_code}): {r.text[:200]}")
    return {"queries": len(latencies), "p50_ms": round(percentile(latencies, 50), 2),
            "p95_ms": round(percentile(latencies, 95), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2),
            "max_ms_by_kind": {k: round(max(v), 2) for k, v in sorted(by_kind.items())}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=args.url, timeout=60.0) as http:
        headers = await fresh_org(http)
        if args.command == "import":
            return {"import": await run_import(http, headers, args.rows, args.seed,
                                               args.timeout, args.server_pid)}
        imported = await run_import(http, headers, args.patients, args.seed, args.timeout,
                                    args.server_pid)
        return {"import": imported,
                "search": await run_search(http, headers, args.queries, args.seed,
                                           args.timeout)}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.patients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["import", "search"])
    parser.add_argument("--url", default=os.environ.get("BENCH_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--rows", type=int, default=10_000, help="import: CSV rows")
    parser.add_argument("--patients", type=int, default=100_000, help="search: directory size")
    parser.add_argument("--queries", type=int, default=500, help="search: how many")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound per phase (s)")
    parser.add_argument("--server-pid", type=int, help="sample this local process's memory")
    parser.add_argument("--json", type=Path, help="also write the result here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    result = asyncio.run(main(arguments))
    text = json.dumps(result, indent=2)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")
