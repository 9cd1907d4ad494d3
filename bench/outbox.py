"""`python -m bench.outbox`: how fast one node's outbox worker sends patient notifications.

Starts a local fake of Twilio's REST API (the tests' `tests/fake_twilio.py`: the real
`twilio` client talks to it over HTTP) and one server pointed at it, on a fresh database
(SQLite by default, or `--database-url` for PostgreSQL). Sets up a clinic on its trial
with a team, a number, `--patients` patients (one CSV import) and a conversation each,
then sends `--messages` staff messages (round-robin over the conversations, `--channel`)
as fast as the HTTP API takes them, and times until the fake has received every SMS.

Reports the send phase, the drain (first message stored to last SMS received), the
notifications per second, the steady rate (first SMS received to last), and the backlog
when the sends finished. With `--backlog` the
node only stores, and one separate `python -m server worker` started afterwards drains
the whole backlog: the worker's own rate. Bounded: every phase
stops after `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.api import Api
from bench.fake_twilio import ROOT, FakeTwilio, twilio_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


async def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the server at {url} did not get ready in {timeout:.0f} s")


async def setup(api: Api, http: httpx.AsyncClient, fake: FakeTwilio, patients: int,
                channel: str) -> tuple[dict[str, str], list[str]]:
    signed_up = await api.signup("Bench clinic", "Bench", f"b{secrets.token_hex(4)}@x.org",
                                 secrets.token_urlsafe(12))
    token = signed_up["token"]
    auth = {"Authorization": f"Bearer {token}"}
    if not await api.start_trial(token):
        raise SystemExit("the clinic's trial did not start")
    team = await api.create_team(token, "Desk")
    await api.add_to_team(token, team, signed_up["user"]["id"])
    number = "+14155550100"
    fake.set_available("415", [(number, "San Francisco", "CA")])
    number_id = str((await api.buy_number(token, number, team))["id"])
    rows = "first_name,last_name,phone,email\n" + "".join(
        f"P{i},Bench,+1628555{i:04d},p{i}@example.org\n" for i in range(patients))
    r = await http.post("/api/v1/patients/import", content=rows.encode(),
                        headers={**auth, "Content-Type": "text/csv"})
    r.raise_for_status()
    job = r.json()["job_id"]
    while (report := (await http.get(f"/api/v1/jobs/{job}", headers=auth)).json()
           )["status"] == "running":
        await asyncio.sleep(0.2)
    if report["created"] != patients:
        raise SystemExit(f"the patient import did not create them all: {report}")
    ids: list[str] = []
    cursor = None
    while True:
        r = await http.get("/api/v1/patients", params={"limit": 200, **(
            {"cursor": cursor} if cursor else {})}, headers=auth)
        page = r.json()
        ids += [p["id"] for p in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    conversations = []
    for patient_id in ids[:patients]:
        conversation = await api.create_patient_conversation(token, patient_id, number_id,
                                                             channel)
        conversations.append(conversation["id"])
    return auth, conversations


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, FakeTwilio() as fake:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PORT": str(port), "PUBLIC_URL": url, "SIGNUP_OPEN": "true",
               "DATABASE_URL": args.database_url or f"sqlite://{tmp}/outbox.sqlite3",
               **twilio_env(fake), "BLOOMTEXT_LOG_LEVEL": "warning"}
        if args.backlog:  # the web node stores; a separate worker drains afterwards
            env["BLOOMTEXT_OUTBOX_WORKER"] = "off"
        subprocess.run([sys.executable, "-m", "server", "migrate"], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        server = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_ready(url, 30)
            async with httpx.AsyncClient(base_url=url, timeout=30.0) as http, Api(url) as api:
                auth, conversations = await setup(api, http, fake, args.patients,
                                                  args.channel)
                before = len(fake.messages)
                sem = asyncio.Semaphore(args.concurrency)
                started = time.perf_counter()

                async def say(i: int) -> None:
                    async with sem:
                        cid = conversations[i % len(conversations)]
                        r = await http.post(f"/api/v1/conversations/{cid}/messages", json={
                            "body": f"Bench notice {i}", "client_id": uuid.uuid4().hex},
                            headers=auth)
                        r.raise_for_status()

                await asyncio.wait_for(
                    asyncio.gather(*(say(i) for i in range(args.messages))), args.timeout)
                sent_s = time.perf_counter() - started
                backlog = args.messages - (len(fake.messages) - before)
                worker = None
                if args.backlog:
                    command = [sys.executable, "-m", "server", "worker"]
                    if args.profile:
                        command[1:1] = ["-m", "cProfile", "-o", str(args.profile)]
                    worker = subprocess.Popen(command, env=env, cwd=ROOT,
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
                    started = time.perf_counter()  # the drain alone
                deadline = time.monotonic() + args.timeout
                while len(fake.messages) - before < args.messages:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {len(fake.messages) - before} of "
                                         f"{args.messages} SMS arrived in {args.timeout:.0f} s")
                    await asyncio.sleep(0.02)
                drained_s = time.perf_counter() - started
                ours = fake.messages[before:]
                # From the first SMS to the last: the rate once the worker is going,
                # without its start (imports, connections) in the figure.
                steady_s = (ours[-1].created - ours[0].created).total_seconds()
                worker_cpu_s = cpu_seconds(worker.pid) if worker is not None else None
                if worker is not None:
                    worker.send_signal(signal.SIGINT)
                    worker.wait(30)
        finally:
            server.terminate()
            server.wait(10)
    return {"messages": args.messages, "conversations": len(conversations),
            "channel": args.channel, "database": "postgres" if args.database_url else "sqlite",
            "worker": "separate, started on the backlog" if args.backlog else "in the node",
            "sends_s": round(sent_s, 2), "sends_per_s": round(args.messages / sent_s),
            "backlog_when_sends_done": backlog, "drained_s": round(drained_s, 2),
            "notifications_per_s": round(args.messages / drained_s),
            "first_to_last_sms_s": round(steady_s, 2),
            # The worker's own CPU (its start included): what one core of it can send.
            "worker_cpu_s": worker_cpu_s,
            "worker_cpu_ms_per_notification": (
                round(1000 * worker_cpu_s / args.messages, 2) if worker_cpu_s else None),
            "steady_per_s": round((args.messages - 1) / steady_s) if steady_s else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=200, help="at most 10,000")
    parser.add_argument("--channel", default="secure_sms", choices=["sms", "secure_sms"])
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight")
    parser.add_argument("--database-url", help="a fresh PostgreSQL database (default: SQLite)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound per phase (s)")
    parser.add_argument("--backlog", action="store_true",
                        help="store every message first, then time one separate "
                        "`python -m server worker` draining them")
    parser.add_argument("--profile", type=Path, help="with --backlog: cProfile the worker")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
