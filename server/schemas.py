"""Request and response bodies as msgspec Structs: they validate input and generate OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from realtime.protocol import NO_NUL, ClientId, Id, Seq

Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Email = Annotated[
    str, Meta(min_length=3, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")
]
Password = Annotated[str, Meta(min_length=1, max_length=1024)]
NewPassword = Annotated[str, Meta(min_length=8, max_length=1024)]
Text = Annotated[str, Meta(min_length=1, max_length=10_000, pattern=NO_NUL)]
Timestamp = Annotated[str, Meta(description="ISO 8601 UTC with milliseconds")]


class Body(Struct, forbid_unknown_fields=True):
    """Request bodies reject unknown fields: a typo is an error, not a silent no-op."""


class SignupBody(Body):
    org_name: Name
    name: Name
    email: Email
    password: NewPassword


class LoginBody(Body):
    email: Email
    password: Password


class MemberBody(Body):
    email: Email
    name: Name
    role: Literal["admin", "member"] = "member"
    password: NewPassword | None = None


class BotBody(Body):
    name: Name


class TeamBody(Body):
    name: Name


class MemberPatchBody(Body):
    role: Literal["admin", "member"] | None = None
    active: bool | None = None


class AcceptBody(Body):
    password: Password
    name: Name | None = None
    org_name: Name | None = None  # an external's own organisation (not used for members)


PolicyValue = bool | int | float | str | None


class OrgPatchBody(Body):
    name: Name | None = None
    policies: Annotated[
        dict[str, PolicyValue],
        Meta(description="merged key by key; a key set to null is removed"),
    ] | None = None


class Target(Body):
    user_id: Id | None = None
    email: Email | None = None
    patient_id: str | None = None
    patient: dict[str, Any] | None = None


PatientText = Annotated[str, Meta(max_length=320)] | None


class PatientBody(Body):
    """Each optional; a phone or an email is required. Validated and normalised by the
    directory (phones to E.164, DOB YYYY-MM-DD not in the future, MRN unique)."""

    first_name: PatientText = None
    last_name: PatientText = None
    dob: PatientText = None
    mrn: PatientText = None
    email: PatientText = None
    phone: PatientText = None


class PatientPatchBody(PatientBody):
    archived: bool | None = None


class PhoneNumberBody(Body):
    number: Annotated[str, Meta(min_length=1, max_length=40)]
    team_id: Id


class PhoneNumberPatchBody(Body):
    team_id: Id


class ConversationBody(Body):
    to: Annotated[list[Target], Meta(min_length=1, max_length=100)]
    subject: Annotated[str, Meta(max_length=300, pattern=NO_NUL)] | None = None
    phone_number_id: str | None = None
    channel: Literal["secure_sms", "sms", "secure_email"] | None = None


class ConversationPatchBody(Body):
    """Staff switch a patient conversation's channel (the next messages use it), or
    rename a conversation."""

    subject: Annotated[str, Meta(max_length=300, pattern=NO_NUL)] | None = None
    channel: Literal["secure_sms", "sms", "secure_email"] | None = None


class MessageBody(Body):
    body: Text
    client_id: ClientId


class ReadBody(Body):
    seq: Seq


# -- responses (documentation; the handlers build the same shapes) ---------------


class User(Struct):
    id: str
    org_id: str
    kind: Literal["member", "external", "bot", "patient"]
    role: Literal["admin", "member"]
    name: str
    email: str | None
    created_at: Timestamp


class Seats(Struct):
    used: int
    limit: int | None


class Org(Struct):
    id: str
    name: str
    plan: Literal["free", "trial", "pro"]
    trial_ends_at: Timestamp | None
    seats: Seats
    policies: dict[str, Any]


class Session(Struct):
    token: str
    user: User


class AcceptResult(Struct):
    token: str
    user: User
    conversation_ids: list[str] = msgspec.field(default_factory=list)  # externals: joined


class SignupResult(Struct):
    token: str
    user: User
    org: Org


class _InvitationFields(Struct):
    """What every view of an invitation shows."""

    id: str
    kind: Literal["member", "external"]
    email: str
    name: str | None
    role: Literal["admin", "member"]
    created_at: Timestamp
    expires_at: Timestamp


class Invitation(_InvitationFields):
    link: Annotated[str, Meta(description="only when the server sends no mail "
                                          "(SMTP_URL unset): pass it on yourself")] = ""


class InvitationDelivery(Struct):
    status: Literal["held", "pending", "sent", "logged", "failed", "cancelled", "unknown"]
    attempts: int
    error: str | None


class OpenInvitation(_InvitationFields):
    expired: bool
    delivery: InvitationDelivery


class InvitationList(Struct):
    items: list[OpenInvitation]
    next: str | None


class InviteInfo(Struct):
    kind: Literal["member", "external"]
    email: str
    org_name: str
    account_exists: bool
    name: str | None


class TeamMemberRef(Struct):
    id: str
    name: str


class Team(Struct):
    id: str
    name: str
    members: list[TeamMemberRef]
    created_at: Timestamp


class TeamList(Struct):
    items: list[Team]
    next: str | None


class Me(Struct):
    user: User
    org: Org
    policies: dict[str, Any]


class BotResult(Struct):
    user: User
    token: str


class Participant(Struct):
    id: str
    kind: Literal["member", "external", "bot", "patient"]
    name: str
    read_seq: int


class Invitee(Struct):
    """An outside address named in the conversation that has not joined yet."""

    email: str
    kind: Literal["external"]
    invited: bool  # the invitation mail has gone (it goes with the first message)
    link: str | None = None  # only in the creator's answer, when SMTP_URL is unset


class Conversation(Struct):
    id: str
    org_id: str
    org_name: str  # the host organisation (an external's conversations are elsewhere)
    kind: Literal["internal", "patient"]
    subject: str | None
    participants: list[Participant]
    invitees: list[Invitee]
    phone_number_id: str | None
    channel: str | None
    last_seq: int
    read_seq: int
    created_at: Timestamp


class Sender(Struct):
    id: str
    name: str
    kind: str


class Event(Struct):
    id: str
    conversation_id: str
    seq: int
    kind: Literal["message", "recall", "participant_added", "participant_removed"]
    sender: Sender | None
    body: str | None
    attachments: list[dict[str, Any]]
    client_id: str | None
    created_at: Timestamp
    recalled: bool = False
    expired: bool = False  # emptied by the organisation's retention policy
    target_id: str | None = None


class EventPage(Struct):
    events: list[Event]
    last_seq: int


class UserList(Struct):
    items: list[User]
    next: str | None


class ConversationList(Struct):
    items: list[Conversation]
    next: str | None


class ErrorDetail(Struct):
    code: str
    message: str
    details: dict[str, Any] | None = None


class Error(Struct):
    error: ErrorDetail


class Health(Struct):
    status: str
    checks: dict[str, str] = {}


def json_schema_components(types: list[type]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")


class Patient(Struct):
    id: str
    first_name: str | None
    last_name: str | None
    dob: str | None
    mrn: str | None
    email: str | None
    phone: str | None
    unverified: bool
    archived: bool
    created_at: Timestamp
    updated_at: Timestamp


class AuditActor(Struct):
    id: str | None
    kind: str


class AuditTarget(Struct):
    kind: str | None
    id: str | None


class AuditEntry(Struct):
    id: str
    at: Timestamp
    org_id: str
    actor: AuditActor
    action: str
    target: AuditTarget
    patient_id: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]


class AuditPage(Struct):
    items: list[AuditEntry]
    next: str | None


class PatientList(Struct):
    items: list[Patient]
    next: str | None


class AvailableNumber(Struct):
    number: str
    locality: str | None
    region: str | None


class AvailableNumberList(Struct):
    items: list[AvailableNumber]
    next: None


class PhoneNumber(Struct):
    id: str
    number: str
    team_id: str
    created_at: Timestamp


class PhoneNumberList(Struct):
    items: list[PhoneNumber]
    next: None


class JobAccepted(Struct):
    job_id: str


class JobError(Struct):
    line: int
    message: str


class Job(Struct):
    id: str
    kind: Literal["patient_import"]
    status: Literal["running", "done", "failed"]
    total: int
    done: int
    created: int
    updated: int
    rejected: int
    progress: float  # 0..1 through the file, by bytes
    errors: list[JobError]
    created_at: Timestamp
    finished_at: Timestamp | None
    message: str | None = None


class TwilioInboundSms(Struct):
    """The fields of Twilio's inbound-SMS request that this server reads (others are
    ignored, but every field counts in the signature)."""

    MessageSid: str
    From: str
    To: str
    Body: str = ""
    NumMedia: str = "0"
    OptOutType: str | None = None


class TwilioStatus(Struct):
    """The fields of Twilio's status callback that this server reads."""

    MessageSid: str
    MessageStatus: Literal["queued", "sending", "sent", "delivered", "undelivered", "failed",
                           "accepted", "scheduled", "read", "canceled"]
    ErrorCode: str | None = None


class PortalForm(Struct):
    """The portal page's forms: `dob` (YYYY-MM-DD) answers the DOB question; `body`, with
    the page's `client_id`, is a reply."""

    dob: str | None = None
    body: str | None = None
    client_id: str | None = None


class PortalTicket(Struct):
    ticket: Annotated[str, Meta(description="one use, within 60 s: auth {ticket} on /ws")]
    conversation_id: str
