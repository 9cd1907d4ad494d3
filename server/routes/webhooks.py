"""Twilio's webhooks: inbound SMS and delivery status. Each request must carry a valid
`X-Twilio-Signature`, computed by Twilio over the URL it was configured with (this
server's PUBLIC_URL: right behind a TLS-terminating proxy too) and the form fields."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from twilio.request_validator import RequestValidator

from server import schemas as s
from server.actions import sms_inbound
from server.errors import ApiError
from server.http import route, services

MAX_FORM_FIELDS = 100


async def _signed_form(request: Request) -> dict[str, str]:
    """The form fields, once the signature is checked (403 otherwise, nothing stored)."""
    settings = services(request).settings
    if not settings.twilio_auth_token:
        raise ApiError("forbidden", "Twilio is not configured on this server")
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    url = settings.public_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("x-twilio-signature", "")
    if not signature or not RequestValidator(settings.twilio_auth_token).validate(
            url, params, signature):
        services(request).metrics.webhook_rejections.inc()
        raise ApiError("forbidden", "the request's Twilio signature does not validate")
    return params


@route("POST", "/webhooks/twilio/sms", "Inbound SMS to one of the organisation's numbers "
       "(Twilio, signed): stored, then answered with TwiML", auth=False, tag="webhooks",
       form=s.TwilioInboundSms, content_type="text/xml", errors=(403,))
async def twilio_sms(request: Request) -> Response:
    form = await _signed_form(request)
    twiml = await sms_inbound.receive_sms(services(request), form)
    return Response(twiml, media_type="text/xml")


@route("POST", "/webhooks/twilio/status", "A delivery status of an SMS this server sent "
       "(Twilio, signed)", auth=False, tag="webhooks", form=s.TwilioStatus, status=204,
       errors=(403,))
async def twilio_status(request: Request) -> Response:
    form = await _signed_form(request)
    await sms_inbound.status_callback(services(request), form)
    return Response(status_code=204)
