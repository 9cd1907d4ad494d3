"""Tortoise models. Plain data and constraints; no business rules, no HTTP."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class Org(Model):
    id = fields.CharField(max_length=32, primary_key=True)
    name = fields.CharField(max_length=200)
    plan = fields.CharField(max_length=16, default="free", db_default="free")
    trial_ends_at = fields.DatetimeField(null=True)
    policies = fields.JSONField(default=dict)
    created_at = fields.DatetimeField()

    class Meta:
        table = "orgs"


class User(Model):
    """Anyone who can take part in a conversation: staff, externals, bots, patients."""

    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField("models.Org", related_name="users", on_delete=fields.CASCADE)
    kind = fields.CharField(max_length=16)  # member | external | bot | patient
    role = fields.CharField(max_length=16, default="member", db_default="member")
    name = fields.CharField(max_length=200)
    # Lower-cased; unique across the server because it is the login.
    email = fields.CharField(max_length=320, null=True, unique=True)
    password_hash = fields.CharField(max_length=255, null=True)
    active = fields.BooleanField(default=True, db_default=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "users"


class ApiToken(Model):
    """A login session or a bot's key. Only the SHA-256 of the secret is stored."""

    id = fields.CharField(max_length=32, primary_key=True)
    user = fields.ForeignKeyField("models.User", related_name="tokens", on_delete=fields.CASCADE)
    token_hash = fields.CharField(max_length=64, unique=True)
    kind = fields.CharField(max_length=16, default="session", db_default="session")
    created_at = fields.DatetimeField()
    last_used_at = fields.DatetimeField()
    # Absolute end of the session; null for bot keys, which end only when revoked.
    expires_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_tokens"


class Conversation(Model):
    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField(
        "models.Org", related_name="conversations", on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=16, default="internal", db_default="internal")
    subject = fields.CharField(max_length=300, null=True)
    # The seq of the newest event; the next event takes last_seq + 1 under a row lock.
    last_seq = fields.BigIntField(default=0, db_default=0)
    phone_number_id = fields.CharField(max_length=32, null=True)
    channel = fields.CharField(max_length=16, null=True)
    created_by = fields.ForeignKeyField(
        "models.User", related_name="created_conversations", null=True, on_delete=fields.SET_NULL
    )
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "conversations"


class Participant(Model):
    """A user's membership of a conversation, with their read position (their receipt)."""

    id = fields.BigIntField(primary_key=True)
    conversation = fields.ForeignKeyField(
        "models.Conversation", related_name="participants", on_delete=fields.CASCADE
    )
    user = fields.ForeignKeyField(
        "models.User", related_name="participations", on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=16)
    read_seq = fields.BigIntField(default=0, db_default=0)
    read_at = fields.DatetimeField(null=True)
    joined_at = fields.DatetimeField()

    class Meta:
        table = "participants"
        unique_together = (("conversation", "user"),)


class Event(Model):
    """One entry of a conversation's timeline."""

    id = fields.CharField(max_length=32, primary_key=True)
    conversation = fields.ForeignKeyField(
        "models.Conversation", related_name="events", on_delete=fields.CASCADE
    )
    seq = fields.BigIntField()
    kind = fields.CharField(max_length=32)
    sender = fields.ForeignKeyField(
        "models.User", related_name="events", null=True, on_delete=fields.SET_NULL
    )
    # As the sender was named and placed when it was sent: events are a record.
    sender_name = fields.CharField(max_length=200, null=True)
    sender_kind = fields.CharField(max_length=16, null=True)
    body = fields.TextField(null=True)
    attachments = fields.JSONField(default=list)
    client_id = fields.CharField(max_length=64, null=True)
    target_id = fields.CharField(max_length=32, null=True)
    recalled = fields.BooleanField(default=False, db_default=False)
    created_at = fields.DatetimeField()

    class Meta:
        table = "events"
        # No gaps and no duplicates per conversation; a retried send by the same
        # sender with the same client_id finds the first event instead of a second.
        unique_together = (("conversation", "seq"), ("sender", "client_id"))


class OutboxMessage(Model):
    """A mail or SMS to send, written in the transaction of the change that causes it and
    sent by the outbox worker (channels/outbox.py), with retries."""

    id = fields.CharField(max_length=32, primary_key=True)
    org_id = fields.CharField(max_length=32, null=True)
    channel = fields.CharField(max_length=16)  # email | sms
    purpose = fields.CharField(max_length=32)  # e.g. invitation: for reports, never content
    recipient = fields.CharField(max_length=320)
    # What the sender needs (subject, text, html; or the SMS body). Cleared once the
    # message is sent or has failed: it may hold a link with a secret in it.
    payload = fields.JSONField(null=True)
    status = fields.CharField(max_length=16, default="pending", db_default="pending")
    attempts = fields.IntField(default=0, db_default=0)
    next_attempt_at = fields.DatetimeField()
    # A worker that claimed the row owns it until then; past it another may take it over.
    claimed_until = fields.DatetimeField(null=True)
    last_error = fields.CharField(max_length=500, null=True)
    provider_id = fields.CharField(max_length=200, null=True)
    created_at = fields.DatetimeField()
    sent_at = fields.DatetimeField(null=True)

    class Meta:
        table = "outbox"
        indexes = (("status", "next_attempt_at"),)


class Invitation(Model):
    """A link that lets someone join: as a member of the organisation, or as an external
    in the conversations that name their address. Only the keyed hash of its secret is
    stored. It works once, until `expires_at`, unless revoked (a resend revokes the
    previous link)."""

    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField("models.Org", related_name="invitations",
                                 on_delete=fields.CASCADE)
    kind = fields.CharField(max_length=16, default="member", db_default="member")
    email = fields.CharField(max_length=320)
    name = fields.CharField(max_length=200, null=True)
    role = fields.CharField(max_length=16, default="member", db_default="member")
    token_hash = fields.CharField(max_length=64, unique=True)
    invited_by = fields.ForeignKeyField("models.User", related_name="invitations_sent",
                                        null=True, on_delete=fields.SET_NULL)
    outbox_id = fields.CharField(max_length=32, null=True)  # the mail that carries it
    # When the mail was let go to the outbox worker. An external invitation is held
    # (null) until a message is stored in one of its conversations.
    mailed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField()
    expires_at = fields.DatetimeField()
    accepted_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "invitations"
        indexes = (("org_id", "email"), ("mailed_at",))


class Team(Model):
    """A group of members. Phone numbers belong to teams (patients issue)."""

    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField("models.Org", related_name="teams", on_delete=fields.CASCADE)
    name = fields.CharField(max_length=200)
    created_at = fields.DatetimeField()

    class Meta:
        table = "teams"


class TeamMember(Model):
    id = fields.BigIntField(primary_key=True)
    team = fields.ForeignKeyField("models.Team", related_name="memberships",
                                  on_delete=fields.CASCADE)
    user = fields.ForeignKeyField("models.User", related_name="team_memberships",
                                  on_delete=fields.CASCADE)
    added_at = fields.DatetimeField()

    class Meta:
        table = "team_members"
        unique_together = (("team", "user"),)


class LoginFailure(Model):
    """One failed login, counted for an account and for an address (keyed hashes, not
    the email or address themselves). Shared by every node through the database."""

    id = fields.BigIntField(primary_key=True)
    key_hash = fields.CharField(max_length=64)
    at = fields.DatetimeField()

    class Meta:
        table = "login_failures"
        indexes = (("key_hash", "at"),)


class PendingParticipant(Model):
    """An outside address named in a conversation before its owner has joined it.

    The external invitation for that address (one per host organisation and address)
    is mailed when the conversation's first event is stored; accepting it turns every
    pending row of the host organisation for that address into a participant."""

    id = fields.BigIntField(primary_key=True)
    conversation = fields.ForeignKeyField("models.Conversation", related_name="pending",
                                          on_delete=fields.CASCADE)
    email = fields.CharField(max_length=320)
    invited_by = fields.ForeignKeyField("models.User", related_name="pending_added",
                                        null=True, on_delete=fields.SET_NULL)
    created_at = fields.DatetimeField()

    class Meta:
        table = "pending_participants"
        unique_together = (("conversation", "email"),)
        indexes = (("email",),)


class PhoneNumber(Model):
    """A number the organisation owns (bought through Twilio), given to exactly one team."""

    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField("models.Org", related_name="phone_numbers",
                                 on_delete=fields.CASCADE)
    team = fields.ForeignKeyField("models.Team", related_name="phone_numbers",
                                  on_delete=fields.RESTRICT)
    number = fields.CharField(max_length=20, unique=True)  # E.164
    provider_sid = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "phone_numbers"


class Patient(Model):
    """A patient of the organisation. Its id is also the id of its `users` row (kind
    patient), which is what conversations and events refer to."""

    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField("models.Org", related_name="patients",
                                 on_delete=fields.CASCADE)
    first_name = fields.CharField(max_length=200, null=True)
    last_name = fields.CharField(max_length=200, null=True)
    dob = fields.DateField(null=True)
    mrn = fields.CharField(max_length=64, null=True)
    email = fields.CharField(max_length=320, null=True)
    phone = fields.CharField(max_length=20, null=True)  # E.164
    # Created by an inbound SMS from an unknown phone: staff should confirm who it is.
    unverified = fields.BooleanField(default=False, db_default=False)
    archived_at = fields.DatetimeField(null=True)
    # Lower-cased name, MRN, email, phone digits and DOB, for `?q=` substring search
    # (a trigram index on PostgreSQL).
    search_text = fields.TextField(default="")
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "patients"
        unique_together = (("org", "mrn"),)
        indexes = (("org_id", "phone"), ("org_id", "email"))


class Job(Model):
    """A background job (a patient import), its progress and its report."""

    id = fields.CharField(max_length=32, primary_key=True)
    org = fields.ForeignKeyField("models.Org", related_name="jobs", on_delete=fields.CASCADE)
    created_by = fields.ForeignKeyField("models.User", related_name="jobs", null=True,
                                        on_delete=fields.SET_NULL)
    kind = fields.CharField(max_length=32)
    status = fields.CharField(max_length=16, default="running", db_default="running")
    total = fields.IntField(default=0, db_default=0)
    done = fields.IntField(default=0, db_default=0)
    created = fields.IntField(default=0, db_default=0)
    updated = fields.IntField(default=0, db_default=0)
    rejected = fields.IntField(default=0, db_default=0)
    # How far through the input the job is, in bytes: a progress bar needs a whole.
    size = fields.BigIntField(default=0, db_default=0)
    position = fields.BigIntField(default=0, db_default=0)
    errors = fields.JSONField(default=list)  # [{line, message}], the first MAX_JOB_ERRORS
    message = fields.CharField(max_length=500, null=True)  # why a job failed
    idempotency_key = fields.CharField(max_length=200, null=True)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()  # a heartbeat while running
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "jobs"
        unique_together = (("org", "idempotency_key"),)


class Delivery(Model):
    """How a patient-conversation message reached its patient (or did not): one per message,
    channel and kind, with the latest status the provider reported. Written by the outbox
    worker; updated by Twilio's status callbacks, never backwards."""

    id = fields.CharField(max_length=32, primary_key=True)
    org_id = fields.CharField(max_length=32)
    event_id = fields.CharField(max_length=32)
    conversation_id = fields.CharField(max_length=32)
    patient_id = fields.CharField(max_length=32)
    channel = fields.CharField(max_length=8)  # sms | email
    mode = fields.CharField(max_length=16)  # sms | secure_sms | secure_email: what was sent
    kind = fields.CharField(max_length=16, default="message", db_default="message")  # | reminder
    status = fields.CharField(max_length=16)  # queued|sent|delivered|undelivered|failed|opted_out
    provider_sid = fields.CharField(max_length=64, null=True, unique=True)  # Twilio MessageSid
    error = fields.CharField(max_length=300, null=True)
    fallback = fields.BooleanField(default=False, db_default=False)  # email after SMS failed
    # Set just before the provider is called: a worker that finds it set (and no SID)
    # asks the provider whether that send went through before sending again.
    sending_since = fields.DatetimeField(null=True)
    # Unread reminders queued for this (secure) notice, and when the last one was.
    reminders = fields.IntField(default=0, db_default=0)
    reminded_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "deliveries"
        unique_together = (("event_id", "channel", "kind"),)
        indexes = (("conversation_id", "event_id"),)


class OptOut(Model):
    """A phone that answered STOP to one of our numbers: it gets no SMS from that number
    until it answers START. Kept by phone, whether or not a patient has it yet."""

    id = fields.BigIntField(primary_key=True)
    phone_number_id = fields.CharField(max_length=32)
    phone = fields.CharField(max_length=20)
    created_at = fields.DatetimeField()

    class Meta:
        table = "opt_outs"
        unique_together = (("phone_number_id", "phone"),)


class PortalLink(Model):
    """A secure link sent to a patient (`/p/<token>`): only the keyed hash of its token is
    stored. Bound to one patient and conversation; revoked by a newer link for the same
    conversation; locked for a while after repeated wrong DOBs."""

    id = fields.CharField(max_length=32, primary_key=True)
    token_hash = fields.CharField(max_length=64, unique=True)
    org_id = fields.CharField(max_length=32)
    patient_id = fields.CharField(max_length=32)
    conversation_id = fields.CharField(max_length=32)
    event_id = fields.CharField(max_length=32, null=True)  # the message it announced
    failed_checks = fields.IntField(default=0, db_default=0)
    locked_until = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField()
    expires_at = fields.DatetimeField()
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "portal_links"
        indexes = (("conversation_id", "patient_id"),)


class PortalSession(Model):
    """A patient's session in the portal, started by a link (and their DOB): a cookie
    holding a token whose keyed hash is stored. Idle and absolute timeouts."""

    id = fields.CharField(max_length=32, primary_key=True)
    token_hash = fields.CharField(max_length=64, unique=True)
    link_id = fields.CharField(max_length=32)
    org_id = fields.CharField(max_length=32)
    patient_id = fields.CharField(max_length=32)
    conversation_id = fields.CharField(max_length=32)
    created_at = fields.DatetimeField()
    last_seen_at = fields.DatetimeField()
    expires_at = fields.DatetimeField()  # the absolute end
    ended_at = fields.DatetimeField(null=True)

    class Meta:
        table = "portal_sessions"


class PortalTicket(Model):
    """A one-time ticket (60 s) for the portal page's websocket: its keyed hash."""

    token_hash = fields.CharField(max_length=64, primary_key=True)
    session_id = fields.CharField(max_length=32)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)

    class Meta:
        table = "portal_tickets"


class StoredFile(Model):
    """A file shared in a conversation: its name and type as accepted, and the hash of
    its bytes, which live in the blob store (storage/blobs.py). Several rows may name the
    same blob (the same file sent twice); it is removed once none does. `event_id` is
    the message that carries it (none while it is being sent)."""

    id = fields.CharField(max_length=32, primary_key=True)
    org_id = fields.CharField(max_length=32)
    conversation_id = fields.CharField(max_length=32)
    event_id = fields.CharField(max_length=32, null=True)
    uploader_id = fields.CharField(max_length=32)  # a user (staff, external, patient)
    name = fields.CharField(max_length=255)
    content_type = fields.CharField(max_length=100)
    size = fields.BigIntField()
    sha256 = fields.CharField(max_length=64, index=True)
    # Where it came from: `upload`, or `mms` (an inbound MMS's media, fetched from Twilio).
    source = fields.CharField(max_length=16, default="upload", db_default="upload")
    # Recalled with its message: `event_id`'s `recalled` says so (one flag, one truth).
    created_at = fields.DatetimeField()

    class Meta:
        table = "files"
        indexes = (("conversation_id", "event_id"),)


class AuditEntry(Model):
    """One entry of an organisation's audit trail: who did what to which record, from
    where. Never content: references only. Each entry holds the hash of the one before
    it in its organisation's chain (`prev_hash`) and its own (`hash`, over its fields and
    `prev_hash`), so an edited, removed or inserted row breaks the chain
    (`python -m server audit verify`)."""

    id = fields.CharField(max_length=32, primary_key=True)
    org_id = fields.CharField(max_length=32)
    seq = fields.BigIntField()  # 1, 2, 3... per organisation
    at = fields.DatetimeField()
    actor_id = fields.CharField(max_length=32, null=True)  # none for the system
    actor_kind = fields.CharField(max_length=16)  # member|external|bot|patient|system|anon
    action = fields.CharField(max_length=48)
    target_kind = fields.CharField(max_length=24, null=True)
    target_id = fields.CharField(max_length=64, null=True)
    patient_id = fields.CharField(max_length=32, null=True)  # whose PHI, when a patient's
    ip = fields.CharField(max_length=64, null=True)
    user_agent = fields.CharField(max_length=300, null=True)
    details = fields.JSONField(default=dict)
    prev_hash = fields.CharField(max_length=64)
    hash = fields.CharField(max_length=64)

    class Meta:
        table = "audit_log"
        unique_together = (("org_id", "seq"),)
        indexes = (("org_id", "at"), ("org_id", "patient_id"), ("org_id", "actor_id"))


class AuditHead(Model):
    """The last entry of an organisation's chain: appending locks this row, so entries
    written by several nodes still form one chain; a deleted last entry no longer matches."""

    org_id = fields.CharField(max_length=32, primary_key=True)
    seq = fields.BigIntField()
    hash = fields.CharField(max_length=64)

    class Meta:
        table = "audit_heads"
