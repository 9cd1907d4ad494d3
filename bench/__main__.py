"""`python -m bench SCENARIO [options]`: load a BloomText deployment and report what held.

Scenarios: `setup`, `rooms`, `knee`, `idle`, and `cluster` (starts nodes and several
load processes); `fake-twilio` runs a local fake of Twilio's API for patient rooms. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from bench.api import Api
from bench.client import Codec, ConnectOptions
from bench.report import format_idle, format_knee, format_rooms, write_json
from bench.scenarios import RunConfig, run_idle, run_rates
from bench.server_probe import start_probe
from bench.setup import SetupOptions, ensure_state
from bench.util import BenchError, log, raise_nofile, split_urls

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 2, 3, 130


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_patient_rooms(group: Any) -> None:
    group.add_argument(
        "--patient-rooms",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="share of the conversations that are patient conversations (secure SMS on a "
        "number of their own): every staff message there is also sent to the patient "
        "through the server's Twilio (default 0; see `fake-twilio`)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("deployment")
    g.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="base URL of a node; repeat it or separate with commas for several "
        f"nodes (default: $BENCH_URL or {DEFAULT_URL})",
    )
    g.add_argument("--origin", help="Origin header for /ws (default: each URL's own origin)")
    g.add_argument(
        "--msgpack",
        action="store_true",
        help="use the bloomtext.v1.msgpack subprotocol instead of JSON",
    )
    g.add_argument(
        "--deflate",
        action="store_true",
        help="offer permessage-deflate (off by default: it costs CPU on both ends)",
    )
    g.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    g = common.add_argument_group("setup")
    g.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="setup cache (default: bench/out/state-<host>-<clients>-<rooms>.json)",
    )
    g.add_argument("--fresh", action="store_true", help="ignore the cache; create a new setup")
    g.add_argument(
        "--setup-concurrency",
        type=_positive(int),
        default=8,
        metavar="N",
        help="concurrent API calls while creating users (default 8)",
    )
    g.add_argument(
        "--admin-email",
        help="use this existing admin's organisation instead of "
        "signing up a new one (password: $BENCH_ADMIN_PASSWORD)",
    )
    g = common.add_argument_group("measurement")
    g.add_argument(
        "--server-pid",
        type=int,
        action="append",
        metavar="PID",
        help="server process to sample (children included); default: the process "
        "listening on the URL's port when the URL is loopback",
    )
    g.add_argument("--no-probe", action="store_true", help="do not sample the server process")
    g.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")
    g.add_argument(
        "--connect-concurrency",
        type=_positive(int),
        default=100,
        metavar="N",
        help="websockets opened at a time (default 100)",
    )
    g.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=15.0,
        metavar="S",
        help="per connection: handshake, and auth until ready (default 15)",
    )
    g = common.add_argument_group("time bounds")
    g.add_argument(
        "--timeout",
        type=_positive(float),
        default=3600.0,
        metavar="S",
        help="stop everything after S seconds (default 3600)",
    )
    g.add_argument(
        "--setup-timeout",
        type=_positive(float),
        default=1800.0,
        metavar="S",
        help="bound on creating or checking the setup (default 1800)",
    )
    g.add_argument(
        "--connect-phase-timeout",
        type=_positive(float),
        default=300.0,
        metavar="S",
        help="bound on opening all connections (default 300)",
    )
    g.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")

    rates = argparse.ArgumentParser(add_help=False)
    g = rates.add_argument_group("load")
    g.add_argument("--clients", type=_positive(int), default=1000, help="connections = users")
    g.add_argument("--rooms", type=_positive(int), default=100, help="conversations")
    _add_patient_rooms(g)
    g.add_argument(
        "--drain",
        type=float,
        default=2.0,
        metavar="S",
        help="after the last send, wait at most S s for acks and deliveries "
        "(default 2); what is still missing then counts as lost/unacked",
    )
    g.add_argument(
        "--max-client-rate",
        type=_positive(float),
        default=40.0,
        metavar="N",
        help="refuse rates needing more than N sends/s per connection (default 40; "
        "the server allows 50 sustained)",
    )
    g.add_argument(
        "--p99-limit",
        type=_positive(float),
        default=200.0,
        metavar="MS",
        help="a step holds only while p99 <= MS (default 200)",
    )
    g.add_argument(
        "--sync-after",
        action="store_true",
        help="at the end, reconnect every client, sync from its starting seq and "
        "report what is still missing",
    )
    g.add_argument("--sync-timeout", type=_positive(float), default=60.0, metavar="S")
    g.add_argument("--seed", type=int, default=1, help="sender order shuffle seed")
    g.add_argument(
        "--timeline",
        action="store_true",
        help="also print, per second of each step, the deliveries and the slowest one "
        "(always in --json)",
    )

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load tool for a BloomText deployment. It creates its own organisation, "
        "users and conversations through the API (cached in --state).",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    sub.add_parser("cluster", help="start N nodes on PostgreSQL + Redis and drive them with K "
                   "load processes (options: python -m bench cluster --help)")
    sub.add_parser("fake-twilio", help="run a local fake of Twilio's API for patient rooms "
                   "(options: python -m bench fake-twilio --help)")
    p = sub.add_parser("setup", parents=[common], help="only create/cache the setup")
    p.add_argument("--clients", type=_positive(int), default=1000)
    p.add_argument("--rooms", type=_positive(int), default=100)
    _add_patient_rooms(p)

    p = sub.add_parser(
        "rooms",
        parents=[common, rates],
        help="C clients in R conversations at a target delivery rate",
    )
    p.add_argument(
        "--rate",
        type=_positive(float),
        default=2000.0,
        help="target deliveries/s (sends/s = rate / members per conversation)",
    )
    p.add_argument("--duration", type=_positive(float), default=10.0, metavar="S")
    p.add_argument(
        "--start-at",
        type=_positive(float),
        metavar="EPOCH",
        help="connect, then start sending at this wall-clock time (seconds since the "
        "epoch), so that several load processes send together (`cluster` uses it)",
    )

    p = sub.add_parser(
        "knee",
        parents=[common, rates],
        help="raise the rate until p99 > limit, a loss, or < 90%% achieved",
    )
    p.add_argument("--start", type=_positive(float), default=1000.0, help="first rate")
    p.add_argument("--step", type=_positive(float), default=1000.0, help="rate increment")
    p.add_argument("--max", type=_positive(float), default=40000.0, help="last rate tried")
    p.add_argument(
        "--duration",
        type=_positive(float),
        default=5.0,
        metavar="S",
        help="seconds per step (default 5)",
    )
    p.add_argument(
        "--settle", type=float, default=1.0, metavar="S", help="pause between steps (default 1)"
    )

    p = sub.add_parser("idle", parents=[common], help="N authenticated idle connections")
    p.add_argument("--connections", type=_positive(int), default=5000)
    p.add_argument(
        "--users",
        type=_positive(int),
        default=10,
        help="users whose tokens the connections share, round-robin (default 10)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=3.0,
        metavar="S",
        help="wait before each RSS reading (default 3)",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="S",
        help="keep the connections open S more seconds and count the survivors",
    )
    return parser


def _config(args: argparse.Namespace, urls: list[str]) -> RunConfig:
    connect = ConnectOptions(
        codec=Codec(args.msgpack),
        origin=args.origin,
        open_timeout=args.connect_timeout,
        auth_timeout=args.connect_timeout,
        deflate=args.deflate,
        insecure=args.insecure,
    )
    cfg = RunConfig(
        urls=urls,
        connect=connect,
        connect_concurrency=args.connect_concurrency,
        connect_phase_s=args.connect_phase_timeout,
    )
    if args.scenario in ("rooms", "knee"):
        cfg.drain_s = args.drain
        cfg.max_client_rate = args.max_client_rate
        cfg.p99_limit_ms = args.p99_limit
        cfg.sync_after = args.sync_after
        cfg.sync_timeout_s = args.sync_timeout
        cfg.seed = args.seed
        cfg.settle_s = getattr(args, "settle", 1.0)
        cfg.start_at = getattr(args, "start_at", None)
    return cfg


def _knee_rates(start: float, step: float, top: float) -> list[float]:
    rates: list[float] = []
    rate = start
    while rate <= top + 1e-9:
        rates.append(rate)
        rate += step
    return rates


async def _run(args: argparse.Namespace) -> int:
    urls = split_urls(args.url, os.environ.get("BENCH_URL", DEFAULT_URL))
    if args.scenario == "idle":
        clients, rooms = args.users, 1
        raise_nofile(args.connections + 256)
    else:
        clients, rooms = args.clients, args.rooms
        raise_nofile(clients + 256)
    setup = SetupOptions(
        clients=clients,
        rooms=rooms,
        state_path=args.state,
        concurrency=args.setup_concurrency,
        fresh=args.fresh,
        admin_email=args.admin_email,
        admin_password=os.environ.get("BENCH_ADMIN_PASSWORD"),
        patient_rooms=getattr(args, "patient_rooms", 0.0),
    )
    for url in urls[1:]:
        async with Api(url, verify=not args.insecure) as node:
            await node.preflight()
    async with Api(urls[0], verify=not args.insecure) as api:
        await api.preflight()
        async with asyncio.timeout(args.setup_timeout):
            state = await ensure_state(api, setup)
    patient_rooms = sum(1 for room in state.conversations if room.patient_id is not None)
    if args.scenario == "setup":
        print(
            f"setup ready: {len(state.users)} users in {len(state.orgs)} organisation(s), "
            f"{len(state.conversations)} conversations ({patient_rooms} with a patient)"
        )
        return 0

    cfg = _config(args, urls)
    cfg.probe = start_probe(args.server_pid, urls, enabled=not args.no_probe)
    nodes = f"{len(urls)} node(s): {', '.join(urls)}"
    codec = cfg.connect.codec.subprotocol
    params = {k: v for k, v in vars(args).items() if k != "admin_email"}
    try:
        if args.scenario == "idle":
            idle = await run_idle(state, cfg, args.connections, args.settle, args.hold)
            header = f"idle: {args.connections} connections, {nodes}, {codec}"
            print(format_idle(idle, header))
            result: Any = idle
        else:
            members = clients / rooms
            with_patients = f", {patient_rooms} of them with a patient" if patient_rooms else ""
            header = (
                f"{args.scenario}: {clients} clients in {rooms} conversations "
                f"({members:g} members each{with_patients}), {nodes}, {codec}"
            )
            if args.scenario == "rooms":
                outcome = await run_rates(state, cfg, [args.rate], args.duration, False)
                print(format_rooms(outcome, header, args.timeline))
            else:
                rates = _knee_rates(args.start, args.step, args.max)
                outcome = await run_rates(state, cfg, rates, args.duration, True)
                print(format_knee(outcome, header, args.timeline))
            result = outcome
    finally:
        if cfg.probe is not None:
            cfg.probe.stop()
    if args.json:
        write_json(args.json, args.scenario, params, result)
        log(f"wrote {args.json}")
    return 0


async def _bounded(args: argparse.Namespace) -> int:
    try:
        async with asyncio.timeout(args.timeout):
            return await _run(args)
    except TimeoutError:
        log(f"error: stopped after a timeout (--timeout {args.timeout:g} s, or a phase bound)")
        return EXIT_TIMEOUT


def _runner(no_uvloop: bool) -> Any:
    """uvloop's runner when it is installed (it comes with uvicorn[standard])."""
    if not no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"]:  # an orchestrator of nodes and load processes: own options
        from bench import cluster

        return cluster.main(argv[1:])
    if argv[:1] == ["fake-twilio"]:  # a foreground server, not a load scenario
        from bench import fake_twilio

        return fake_twilio.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.scenario == "idle" and args.users < 2:
        log("error: --users must be at least 2 (the setup creates one conversation)")
        return EXIT_USAGE
    if args.scenario != "idle" and args.clients < 2 * args.rooms:
        log("error: every conversation needs at least 2 members: --clients >= 2 x --rooms")
        return EXIT_USAGE
    try:
        return _runner(args.no_uvloop)(_bounded(args))
    except BenchError as exc:
        log(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
