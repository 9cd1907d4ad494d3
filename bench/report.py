"""Readable tables on stdout and the `--json` file."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.scenarios import IdleResult, RoomsOutcome, SyncResult
from bench.stats import StepResult


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{code} {n}" for code, n in sorted(errors.items()))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Numbers right-aligned; the last column (text) left-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*out, cells[-1]]).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


SATURATED = (
    "the bench itself was near saturation (tool cpu >= 90% or its loop stalled >= 50 ms): "
    "these figures may measure the bench; pin it to its own core or lower the rate"
)


def bench_saturated(r: StepResult) -> bool:
    return (r.tool_cpu_percent or 0) >= 90 or r.tool_max_stall_ms >= 50


def step_lines(r: StepResult) -> list[tuple[str, str]]:
    lat, ack = r.latency_ms, r.ack_latency_ms
    server = r.server
    return [
        (
            "target",
            f"{r.target_deliveries_per_s:,.0f} deliveries/s = {r.target_sends_per_s:,.1f} "
            f"sends/s ({r.sends_per_client_per_s:g} per client) for {r.duration_s:g} s",
        ),
        ("acked sends/s", f"{r.acked_sends_per_s:,.1f}  ({r.acked:,} of {r.sends:,} sends)"),
        (
            "deliveries/s",
            f"{r.deliveries_per_s:,.1f}  ({r.deliveries:,} of {r.expected_deliveries:,} expected)",
        ),
        (
            "latency ms",
            f"p50 {lat.p50:g}  p95 {lat.p95:g}  p99 {lat.p99:g}  max {lat.max:g}  "
            f"(send -> event, {lat.count:,} samples)",
        ),
        ("ack latency ms", f"p50 {ack.p50:g}  p95 {ack.p95:g}  p99 {ack.p99:g}  max {ack.max:g}"),
        ("losses", f"{r.losses:,}"),
        ("duplicates", f"{r.duplicates:,}"),
        ("unacked", f"{r.unacked:,}  (rejected with an error: {r.rejected:,})"),
        ("errors", _errors(r.errors)),
        ("gaps in seq", f"{r.out_of_order:,}"),
        *([("patient SMS", _patient_sms(r))] if r.patient_sends else []),
        ("disconnects", f"{r.disconnects:,}"),
        (
            "server cpu",
            "-"
            if server.cpu_percent is None
            else f"{server.cpu_percent:g}% (100% = one core; pids {server.pids})",
        ),
        (
            "server peak rss",
            "-"
            if server.peak_rss_mib is None
            else f"{server.peak_rss_mib:,.1f} MiB ({server.processes} processes)",
        ),
        (
            "tool cpu",
            f"{_fmt(r.tool_cpu_percent)}%  (scheduler max lag {r.scheduler_max_lag_ms:g} ms, "
            f"loop max stall {r.tool_max_stall_ms:g} ms; drain {r.drain_s:g} s)",
        ),
        ("verdict", r.verdict),
        *([("warning", SATURATED)] if bench_saturated(r) else []),
    ]


def _patient_sms(r: StepResult) -> str:
    sms = r.patient_sms_latency_ms
    return (
        f"{r.patient_sms_sent:,} of {r.patient_sends:,} acked patient-room sends handed to "
        f"Twilio (failed {r.patient_sms_failed:,}); send -> `sent` frame p50 {sms.p50:g}  "
        f"p99 {sms.p99:g}  max {sms.max:g} ms"
    )


def format_timeline(r: StepResult) -> str:
    """One line per second: deliveries received and the slowest one (`--timeline`)."""
    rows = [[str(x.second), f"{x.deliveries:,}", f"{x.max_latency_ms:g}"] for x in r.timeline]
    return _table(["second", "deliveries", "max latency ms"], rows)


def _kv(pairs: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in pairs)


def format_rooms(outcome: RoomsOutcome, header: str, timeline: bool = False) -> str:
    parts = [
        header,
        f"  clients connected  {outcome.clients_connected}"
        + (f" (failed: {_errors(outcome.connect_failures)})" if outcome.connect_failures else ""),
    ]
    for r in outcome.steps:
        parts.append(_kv(step_lines(r)))
        if timeline:
            parts.append(format_timeline(r))
    if outcome.stop_reason and not outcome.steps:
        parts.append(f"  not run: {outcome.stop_reason}")
    parts.extend(_tail(outcome))
    return "\n".join(parts)


def format_knee(outcome: RoomsOutcome, header: str, timeline: bool = False) -> str:
    headers = [
        "step",
        "target/s",
        "sends/s",
        "acked/s",
        "deliv/s",
        "p50",
        "p95",
        "p99",
        "max",
        "lost",
        "dup",
        "unack",
        "errors",
        "srv cpu%",
        "srv MiB",
        "tool cpu%",
        "verdict",
    ]
    # With patient rooms: the SMS handed to Twilio of the acked sends there, and how long
    # after the send (not part of the verdict: that is the staff's send path).
    patients = any(r.patient_sends for r in outcome.steps)
    if patients:
        headers[-1:-1] = ["sms sent", "sms p99"]
    rows = []
    for r in outcome.steps:
        lat = r.latency_ms
        failed = f" ({r.patient_sms_failed} failed)" if r.patient_sms_failed else ""
        sms = (
            [f"{r.patient_sms_sent}/{r.patient_sends}{failed}", f"{r.patient_sms_latency_ms.p99:g}"]
            if patients
            else []
        )
        rows.append(
            [
                str(r.step),
                f"{r.target_deliveries_per_s:,.0f}",
                f"{r.target_sends_per_s:,.0f}",
                f"{r.acked_sends_per_s:,.0f}",
                f"{r.deliveries_per_s:,.0f}",
                f"{lat.p50:g}",
                f"{lat.p95:g}",
                f"{lat.p99:g}",
                f"{lat.max:g}",
                str(r.losses),
                str(r.duplicates),
                str(r.unacked + r.rejected),
                str(sum(r.errors.values())),
                _fmt(r.server.cpu_percent, 0),
                _fmt(r.server.peak_rss_mib),
                _fmt(r.tool_cpu_percent, 0),
                *sms,
                r.verdict,
            ]
        )
    held = outcome.last_held_rate
    parts = [
        header,
        "  latencies in ms; deliv/s = deliveries received per second",
        "",
        _table(headers, rows),
        "",
    ]
    parts.append(
        f"  knee: {'none held' if held is None else f'{held:,.0f} deliveries/s'}"
        f" (last rate with p99 within the limit, nothing lost, >= 90% achieved)"
    )
    if outcome.stop_reason:
        parts.append(f"  stopped: {outcome.stop_reason}")
    saturated = [str(r.step) for r in outcome.steps if bench_saturated(r)]
    if saturated:
        parts.append(f"  warning (steps {', '.join(saturated)}): {SATURATED}")
    if timeline:
        for r in outcome.steps:
            parts.extend(["", f"  step {r.step} ({r.target_deliveries_per_s:,.0f}/s):"])
            parts.append(format_timeline(r))
    parts.extend(_tail(outcome))
    return "\n".join(parts)


def _tail(outcome: RoomsOutcome) -> list[str]:
    lines = []
    if outcome.sync is not None:
        lines.append(format_sync(outcome.sync))
    if outcome.foreign_events:
        lines.append(f"  events not from this run: {outcome.foreign_events}")
    if outcome.unrouted_errors:
        lines.append(f"  other error frames: {_errors(outcome.unrouted_errors)}")
    if outcome.close_codes:
        lines.append(f"  server closes: {_errors(outcome.close_codes)}")
    return lines


def format_sync(s: SyncResult) -> str:
    return _kv(
        [
            ("sync-after", f"{s.connected}/{s.clients} clients reconnected and synced"),
            ("expected", f"{s.expected_events:,} acked events x their conversation's members"),
            ("lost after sync", f"{s.lost_after_sync:,}"),
            ("duplicates", f"{s.duplicates_in_sync:,} (same id twice in one sync)"),
            ("seq gaps", f"{s.seq_gaps:,}"),
            ("caught up in", f"{s.caught_up_s:g} s"),
            ("failures", _errors(s.failures)),
        ]
    )


def format_idle(r: IdleResult, header: str) -> str:
    pairs = [
        (
            "connections",
            f"{r.opened:,} of {r.connections:,} opened in {r.open_s:g} s ({r.users} users)",
        ),
        ("failures", _errors(r.failures)),
        ("server rss before", f"{_fmt(r.rss_before_mib)} MiB"),
        ("rss, first tenth", f"{_fmt(r.rss_warm_mib)} MiB ({r.warm_connections:,} open)"),
        ("server rss after", f"{_fmt(r.rss_after_mib)} MiB"),
        (
            "per connection",
            f"{_fmt(r.kib_per_connection, 2)} KiB (after - first tenth) / the other "
            f"{r.opened - r.warm_connections:,}; gross {_fmt(r.kib_per_connection_gross, 2)} "
            "KiB (after - before) / all",
        ),
        ("after closing", f"{_fmt(r.rss_after_close_mib)} MiB"),
        (
            "note",
            "a process seldom returns freed memory: measure on a freshly started server, "
            "or a second run reuses the first run's memory and shows ~0",
        ),
    ]
    if r.alive_after_hold is not None:
        pairs.append(("alive after hold", f"{r.alive_after_hold:,}"))
    if r.close_codes:
        pairs.append(("server closes", _errors(r.close_codes)))
    if not r.server_pids:
        pairs.append(("note", "no server process watched: RSS figures need a local server"))
    return "\n".join([header, _kv(pairs)])


def environment() -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "tool_affinity": sorted(psutil.Process().cpu_affinity() or [])
        if hasattr(psutil.Process, "cpu_affinity")
        else None,
    }


def write_json(path: Path, scenario: str, params: dict[str, Any], result: Any) -> None:
    data = {
        "scenario": scenario,
        "params": params,
        "environment": environment(),
        "result": asdict(result)
        if is_dataclass(result) and not isinstance(result, type)
        else result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
