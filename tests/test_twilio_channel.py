"""The Twilio channel (numbers and SMS) driving the real `twilio` client against a local
fake of Twilio's REST API (tests/fake_twilio.py): nothing of ours is mocked."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from channels.sender import Outbound
from channels.twilio import (
    AvailableNumber,
    TelephonyError,
    TwilioNumbers,
    TwilioSmsSender,
    make_twilio_client,
)
from tests.fake_twilio import FakeTwilio
from tests.services import find_free_port

pytestmark = pytest.mark.timeout(60)

CLINIC = "+14155550100"
PATIENT = "+14155550199"
SECRET_TEXT = "Your results are ready: code 884-secret-canary"
SMS_URL = "https://clinic.example/hooks/twilio/sms"
STATUS_URL = "https://clinic.example/hooks/twilio/status"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        fake.add_owned(CLINIC)
        yield fake


def numbers(fake: FakeTwilio, timeout: float = 5.0, token: str | None = None) -> TwilioNumbers:
    return TwilioNumbers(make_twilio_client(fake.account_sid, token or fake.auth_token,
                                            api_url=fake.url, timeout=timeout))


def sender(fake: FakeTwilio, timeout: float = 5.0, token: str | None = None) -> TwilioSmsSender:
    return TwilioSmsSender(make_twilio_client(fake.account_sid, token or fake.auth_token,
                                              api_url=fake.url, timeout=timeout))


def sms(**changes: str | None) -> Outbound:
    fields: dict[str, str | None] = {"to": PATIENT, "from_number": CLINIC,
                                     "status_callback": STATUS_URL}
    fields.update(changes)
    return Outbound(id="ob_sms000000000001", channel="sms", purpose="reminder",
                    text=SECRET_TEXT, **fields)  # type: ignore[arg-type]


# -- numbers ----------------------------------------------------------------------------


async def test_search_by_area_code(fake: FakeTwilio) -> None:
    found = await numbers(fake).search_available("415")
    assert found == [
        AvailableNumber("+14155550101", "San Francisco", "CA"),
        AvailableNumber("+14155550102", "San Francisco", "CA"),
        AvailableNumber("+14155550103", "Sausalito", "CA"),
    ]
    assert [n.number for n in await numbers(fake).search_available("212", limit=1)] == [
        "+12125550101"]
    assert await numbers(fake).search_available("907") == []


async def test_buy_sets_the_webhooks_and_the_number_is_gone(fake: FakeTwilio) -> None:
    owned = await numbers(fake).buy("+14155550102", sms_url=SMS_URL, status_callback=STATUS_URL)
    assert owned.number == "+14155550102" and owned.sid.startswith("PN")
    (bought,) = fake.numbers_bought
    assert bought.sid == owned.sid and bought.phone_number == "+14155550102"
    assert (bought.sms_url, bought.sms_method) == (SMS_URL, "POST")
    assert (bought.status_callback, bought.status_callback_method) == (STATUS_URL, "POST")
    remaining = [n.number for n in await numbers(fake).search_available("415")]
    assert remaining == ["+14155550101", "+14155550103"]


async def test_buying_an_unavailable_number_is_refused_clearly(fake: FakeTwilio) -> None:
    await numbers(fake).buy("+14155550101", sms_url=SMS_URL, status_callback=STATUS_URL)
    for number in ("+14155550101", "+14155559999"):  # taken since the search; never offered
        with pytest.raises(TelephonyError) as caught:
            await numbers(fake).buy(number, sms_url=SMS_URL, status_callback=STATUS_URL)
        assert caught.value.kind == "refused" and caught.value.provider_code == 21422
        assert "no longer available" in caught.value.message
    assert len(fake.numbers_bought) == 1


async def test_a_refusal_without_a_known_code_carries_twilios_message(
    fake: FakeTwilio,
) -> None:
    fake.fail_next("available", 400, 21452, "No phone numbers found in area code 999")
    with pytest.raises(TelephonyError) as caught:
        await numbers(fake).search_available("415")
    assert caught.value.kind == "refused" and caught.value.provider_code == 21452
    assert "No phone numbers found in area code" in caught.value.message


async def test_twilio_not_answering_in_time_is_unavailable(fake: FakeTwilio) -> None:
    fake.hang_next("available", 10)
    started = time.monotonic()
    with pytest.raises(TelephonyError) as caught:
        await numbers(fake, timeout=0.5).search_available("415")
    assert time.monotonic() - started < 3
    assert caught.value.kind == "unavailable" and caught.value.provider_code is None

    fake.hang_next("buy", 10)
    with pytest.raises(TelephonyError) as caught:
        await numbers(fake, timeout=0.5).buy("+14155550101", SMS_URL, STATUS_URL)
    assert caught.value.kind == "unavailable"
    assert "may or may not have been bought" in caught.value.message


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_twilio_server_errors_and_rate_limits_are_unavailable(
    fake: FakeTwilio, status: int
) -> None:
    fake.fail_next("buy", status, 20000 + status, "Service trouble")
    with pytest.raises(TelephonyError) as caught:
        await numbers(fake).buy("+14155550101", SMS_URL, STATUS_URL)
    assert caught.value.kind == "unavailable" and caught.value.provider_code == 20000 + status
    assert fake.numbers_bought == []


async def test_twilio_unreachable_is_unavailable() -> None:
    closed = f"http://127.0.0.1:{find_free_port()}"  # nothing listens there
    client = make_twilio_client("AC" + "0" * 32, "token", api_url=closed, timeout=2)
    with pytest.raises(TelephonyError) as caught:
        await TwilioNumbers(client).search_available("415")
    assert caught.value.kind == "unavailable"


async def test_wrong_credentials_are_refused_with_code_20003(fake: FakeTwilio) -> None:
    """Decision: wrong credentials are `refused` (not `unavailable`): retrying will not
    help until an admin fixes the settings, and the message says so."""
    with pytest.raises(TelephonyError) as caught:
        await numbers(fake, token="wrong-token").search_available("415")
    assert caught.value.kind == "refused" and caught.value.provider_code == 20003
    assert "auth token" in caught.value.message
    assert fake.requests("available") == [("available", "401")]


async def test_country_must_be_a_country_code(fake: FakeTwilio) -> None:
    with pytest.raises(ValueError):
        await numbers(fake).search_available("415", country="../../IncomingPhoneNumbers")
    assert fake.requests() == []


def test_api_url_must_be_a_scheme_and_host() -> None:
    for bad in ("ftp://127.0.0.1", "http://127.0.0.1/prefix", "127.0.0.1:8080"):
        with pytest.raises(ValueError):
            make_twilio_client("AC" + "0" * 32, "token", api_url=bad)


# -- SMS --------------------------------------------------------------------------------


async def test_sms_is_sent_and_its_sid_returned(fake: FakeTwilio) -> None:
    result = await sender(fake).send(sms())
    (message,) = fake.messages
    assert result.status == "sent" and result.provider_id == message.sid
    assert message.sid.startswith("SM")
    assert (message.from_, message.to, message.body) == (CLINIC, PATIENT, SECRET_TEXT)
    assert message.status_callback == STATUS_URL


async def test_sms_without_status_callback_sends_none(fake: FakeTwilio) -> None:
    assert (await sender(fake).send(sms(status_callback=None))).status == "sent"
    (message,) = fake.messages
    assert "StatusCallback" not in message.form


async def test_opted_out_recipient_is_permanent(fake: FakeTwilio) -> None:
    fake.opt_out(PATIENT)
    result = await sender(fake).send(sms())
    assert result.status == "permanent"
    assert result.error is not None and result.error.startswith("twilio 21610: ")
    assert SECRET_TEXT not in result.error and fake.messages == []


@pytest.mark.parametrize(("to", "code"), [("12345", 21211), ("+14155550198", 21614)])
async def test_invalid_or_non_mobile_recipient_is_permanent_and_not_named(
    fake: FakeTwilio, to: str, code: int
) -> None:
    if code == 21614:
        fake.fail_next("messages", 400, 21614, f"'To' number {to} is not a valid mobile number")
    result = await sender(fake).send(sms(to=to))
    assert result.status == "permanent"
    assert result.error is not None and result.error.startswith(f"twilio {code}: ")
    assert to not in result.error  # the recipient's number stays out of errors and logs


async def test_from_number_not_of_the_account_is_permanent(fake: FakeTwilio) -> None:
    result = await sender(fake).send(sms(from_number="+14155550177"))
    assert result.status == "permanent" and result.error is not None
    assert result.error.startswith("twilio 21606: ")


async def test_missing_from_number_is_permanent_without_a_request(fake: FakeTwilio) -> None:
    result = await sender(fake).send(sms(from_number=None))
    assert result.status == "permanent"
    assert fake.requests() == []


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, None), (429, 20429)])
async def test_server_errors_and_rate_limits_are_retryable(
    fake: FakeTwilio, status: int, code: int | None
) -> None:
    fake.fail_next("messages", status, code, "<html>Service Unavailable</html>"
                   if code is None else "Try again later")
    result = await sender(fake).send(sms())
    assert result.status == "retryable" and fake.messages == []
    assert result.error is not None and result.error.startswith("twilio ")
    # The next attempt goes through.
    assert (await sender(fake).send(sms())).status == "sent"


async def test_hang_is_retryable(fake: FakeTwilio) -> None:
    fake.hang_next("messages", 10)
    started = time.monotonic()
    result = await sender(fake, timeout=0.5).send(sms())
    assert result.status == "retryable"
    assert time.monotonic() - started < 3


async def test_unreachable_is_retryable() -> None:
    closed = f"http://127.0.0.1:{find_free_port()}"
    client = make_twilio_client("AC" + "0" * 32, "token", api_url=closed, timeout=2)
    assert (await TwilioSmsSender(client).send(sms())).status == "retryable"


async def test_wrong_credentials_are_retryable_for_sms(fake: FakeTwilio) -> None:
    """Decision: a 401 leaves the SMS to a later attempt, so messages queued while the
    token is wrong go out once an admin fixes it (within the outbox's attempts)."""
    result = await sender(fake, token="wrong-token").send(sms())
    assert result.status == "retryable" and result.error is not None
    assert result.error.startswith("twilio 20003: ") and fake.messages == []


async def test_the_sms_text_is_never_logged(
    fake: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.opt_out("+14155550111")
    await sender(fake).send(sms())
    await sender(fake).send(sms(to="+14155550111"))
    await sender(fake, token="wrong-token").send(sms())
    assert caplog.records, "the twilio client logs its requests at INFO"
    assert SECRET_TEXT not in caplog.text and "secret-canary" not in caplog.text
