"""`python -m bench fake-twilio`: the tests' fake of Twilio's REST API, run on its own.

Patient rooms (`--patient-rooms`) make the server buy phone numbers and send SMS through
the Twilio it is configured with; against a real account that costs money and texts real
phones. This runs the tests' fake (`tests/fake_twilio.py`, served by uvicorn on a thread)
in the foreground instead: it offers `--numbers` numbers in area code 415 for the setup to
buy, accepts every SMS from them, prints the variables to start the server with, and
reports how many SMS it has taken until Ctrl-C. It keeps every SMS in memory (a few KiB
each): restart it between long runs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests` is importable wherever the bench is started from

from bench.setup import NUMBER_AREA_CODE  # noqa: E402
from tests.fake_twilio import FakeTwilio  # noqa: E402  (the tests' fake, reused as is)

MAX_NUMBERS = 10_000  # one exchange: +1 415 555 0000-9999


def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    """The server's settings to talk to `fake` instead of Twilio."""
    return {
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_API_URL": fake.url,
    }


def bench_number(area_code: str, n: int) -> str:
    return f"+1{area_code}555{n:04d}"


def offer_numbers(fake: FakeTwilio, count: int, area_code: str = NUMBER_AREA_CODE) -> None:
    """`count` numbers of the exchange 555 for sale in `area_code`, drawn at random: a fake
    restarted against a database that already has some of them offers mostly others.

    SMS are accepted from every number of the exchange, sold by this fake or not: a fake
    restarted with the same credentials and port serves a running server's numbers."""
    digits = random.sample(range(MAX_NUMBERS), count)
    fake.set_available(area_code, [(bench_number(area_code, n), "Bench City", "CA")
                                   for n in digits])
    for n in range(MAX_NUMBERS):
        fake.add_owned(bench_number(area_code, n))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench fake-twilio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    parser.add_argument(
        "--numbers",
        type=int,
        default=1000,
        help=f"numbers offered in area code {NUMBER_AREA_CODE}: one per patient room "
        f"(default 1000, at most {MAX_NUMBERS})",
    )
    parser.add_argument(
        "--account-sid", help="fixed credentials (default: random), e.g. to restart the fake "
        "without restarting the server",
    )
    parser.add_argument("--auth-token")
    parser.add_argument(
        "--env-file",
        type=Path,
        help="also write the server's variables there (NAME=VALUE lines, mode 0600)",
    )
    parser.add_argument(
        "--report-every", type=float, default=10.0, metavar="S",
        help="print the SMS count every S seconds while it changes (default 10)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.numbers <= MAX_NUMBERS:
        print(f"error: --numbers must be between 0 and {MAX_NUMBERS}", file=sys.stderr)
        return 2
    fake = FakeTwilio(args.account_sid, args.auth_token, available={})
    if args.port:
        fake.port = args.port
    offer_numbers(fake, args.numbers)
    try:
        fake.start()
    except RuntimeError as exc:
        print(f"error: {exc} (port taken?)", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # `kill PID` stops it cleanly too
    try:
        env = twilio_env(fake)
        line = " ".join(f"{name}={value}" for name, value in env.items())
        if args.env_file:
            _write_private(args.env_file, "".join(f"{n}={v}\n" for n, v in env.items()))
        print(f"fake Twilio on {fake.url}, {args.numbers} numbers for sale in area code "
              f"{NUMBER_AREA_CODE}; start the server with:\n{line}", flush=True)
        _report_until(stop, fake, args.report_every)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    print(f"fake Twilio stopped: {_counts(fake)}", flush=True)
    return 0


def _report_until(stop: threading.Event, fake: FakeTwilio, every: float) -> None:
    last = _counts(fake)
    while not stop.wait(every):
        now = _counts(fake)
        if now != last:
            print(f"fake Twilio: {now}", flush=True)
            last = now


def _counts(fake: FakeTwilio) -> str:
    refused = sum(1 for _, status in fake.requests("messages") if status != "201")
    return (
        f"{len(fake.messages):,} SMS accepted, {refused:,} refused, "
        f"{len(fake.numbers_bought):,} numbers bought"
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the token
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        file.write(text)
