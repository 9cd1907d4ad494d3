"""The patient directory: create, edit, search, archive, and finding a patient by phone
or email before making a new one.

Every patient has a `users` row (kind `patient`, same id) so conversations and events
refer to patients like to anyone else; the profile lives in `patients`. Phones are kept in
E.164 (`phonenumbers`, `DEFAULT_REGION` for numbers without a country code), emails
lower-cased, DOBs as dates (not in the future), MRNs unique within the organisation.
Neither phone nor email is unique: a family may share one.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import phonenumbers
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from server.actions import audit
from server.actions.context import Actor, Services
from server.actions.orgs import require_patient_plan
from server.errors import ApiError, not_found
from server.ids import iso, new_id, utcnow
from storage import queries
from storage.models import Patient, User

FIELDS = ("first_name", "last_name", "dob", "mrn", "email", "phone")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MRN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
MAX_NAME = 200
SEARCH_LIMIT = 200


class PatientInputError(Exception):
    """Bad values, by field (the import reports them per row, the API as 422)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def normalise_phone(raw: str, region: str) -> str:
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def parse_dob(raw: str, *, us_dates: bool = False) -> date:
    """YYYY-MM-DD; with `us_dates` (imports) also MM/DD/YYYY and M/D/YYYY."""
    value = raw.strip()
    formats = ["%Y-%m-%d"] + (["%m/%d/%Y", "%m-%d-%Y", "%Y/%m/%d"] if us_dates else [])
    for fmt in formats:
        try:
            day = datetime.strptime(value, fmt).date()
        except ValueError:
            continue
        if day > date.today():
            raise ValueError("is in the future")
        if day.year < 1880:
            raise ValueError("is before 1880")
        return day
    raise ValueError("is not a date (YYYY-MM-DD)" + (" or MM/DD/YYYY" if us_dates else ""))


def clean(values: dict[str, Any], region: str, *, us_dates: bool = False) -> dict[str, Any]:
    """Validated, normalised values for the fields present; empty text means none.
    Raises PatientInputError naming every bad field."""
    out: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for name in FIELDS:
        if name not in values:
            continue
        raw = values[name]
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            out[name] = None
            continue
        if not isinstance(raw, str):
            bad[name] = "must be text"
            continue
        text = raw.strip()
        if "\x00" in text:
            bad[name] = "contains NUL"
            continue
        try:
            if name in ("first_name", "last_name"):
                if len(text) > MAX_NAME:
                    raise ValueError(f"is longer than {MAX_NAME} characters")
                out[name] = text
            elif name == "dob":
                out[name] = parse_dob(text, us_dates=us_dates)
            elif name == "mrn":
                if not MRN_RE.match(text):
                    raise ValueError("is 1 to 64 letters, digits and . _ / -")
                out[name] = text
            elif name == "email":
                if not EMAIL_RE.match(text) or len(text) > 320:
                    raise ValueError("is not a valid email address")
                out[name] = text.lower()
            elif name == "phone":
                out[name] = normalise_phone(text, region)
        except ValueError as exc:
            bad[name] = str(exc)
    if bad:
        raise PatientInputError(bad)
    return out


def search_text(p: Patient) -> str:
    digits = re.sub(r"\D", "", p.phone or "")
    parts = [p.first_name, p.last_name, p.mrn, p.email, digits,
             p.dob.isoformat() if p.dob else None]
    return " ".join(x.lower() for x in parts if x)


def display_name(p: Patient) -> str:
    name = " ".join(x for x in (p.first_name, p.last_name) if x)
    return (name or p.phone or p.email or "Patient")[:MAX_NAME]


def patient_view(p: Patient) -> dict[str, Any]:
    return {
        "id": p.id,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "dob": p.dob.isoformat() if p.dob else None,
        "mrn": p.mrn,
        "email": p.email,
        "phone": p.phone,
        "unverified": p.unverified,
        "archived": p.archived_at is not None,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


def _cleaned(svc: Services, values: dict[str, Any]) -> dict[str, Any]:
    try:
        return clean(values, svc.settings.default_region)
    except PatientInputError as exc:
        raise ApiError("invalid", f"invalid patient: {exc}", {"fields": exc.fields}) from None


def _needs_contact(fields: tuple[str, ...] = ("phone", "email")) -> ApiError:
    return ApiError("invalid", "a patient needs a phone or an email",
                    {"fields": {k: "phone or email required" for k in fields}})


def _mrn_taken() -> ApiError:
    return ApiError("conflict", "another patient of this organisation has this MRN",
                    {"fields": {"mrn": "taken"}})


def build_patient(org_id: str, values: dict[str, Any], *, unverified: bool = False
                  ) -> Patient:
    """A patient not yet stored: `patient_user` gives the user row that must go first."""
    now = utcnow()
    patient = Patient(id=new_id("pt"), org_id=org_id, unverified=unverified, created_at=now,
                      updated_at=now, **{k: values.get(k) for k in FIELDS})
    patient.search_text = search_text(patient)
    return patient


def patient_user(patient: Patient) -> User:
    """The patient's user row (same id): what conversations show as the participant."""
    return User(id=patient.id, org_id=patient.org_id, kind="patient", role="member",
                name=display_name(patient), created_at=patient.created_at)


async def new_patient(org_id: str, values: dict[str, Any], *, unverified: bool = False
                      ) -> Patient:
    """Inside the caller's transaction: the patient and its user row."""
    patient = build_patient(org_id, values, unverified=unverified)
    await patient_user(patient).save(force_create=True)
    await patient.save(force_create=True)
    return patient


async def sync_user_name(patient: Patient) -> None:
    """The patient's user row carries the name conversations show."""
    await User.filter(id=patient.id).update(name=display_name(patient))


async def create_patient(svc: Services, actor: Actor, values: dict[str, Any]) -> dict[str, Any]:
    require_staff(actor)
    await require_patient_plan(actor)
    cleaned = _cleaned(svc, values)
    if not cleaned.get("phone") and not cleaned.get("email"):
        raise _needs_contact()
    try:
        async with in_transaction():
            patient = await new_patient(actor.org_id, cleaned)
    except IntegrityError:
        raise _mrn_taken() from None
    audit.staff_did(svc, actor, "patient.create", "patient", patient.id,
                    patient_id=patient.id)
    return patient_view(patient)


def require_staff(actor: Actor) -> None:
    if actor.user.kind not in ("member", "bot"):
        raise ApiError("forbidden", "only members of this organisation may see its patients")


async def find(actor: Actor, patient_id: str, *, include_archived: bool = True) -> Patient:
    query = Patient.filter(id=patient_id, org_id=actor.org_id)
    if not include_archived:
        query = query.filter(archived_at__isnull=True)
    patient = await query.first()
    if patient is None:
        raise not_found("patient")
    return patient


async def get_patient(svc: Services, actor: Actor, patient_id: str) -> dict[str, Any]:
    require_staff(actor)
    await require_patient_plan(actor)
    found = patient_view(await find(actor, patient_id))
    svc.audit.note(audit.Entry(org_id=actor.org_id, action="patient.read",
                               **audit.by(actor, actor.org_id), target_kind="patient",
                               target_id=patient_id, patient_id=patient_id))
    return found


async def update_patient(
    svc: Services, actor: Actor, patient_id: str, values: dict[str, Any],
    archived: bool | None,
) -> dict[str, Any]:
    """PATCH: the fields given change (null clears one); `archived` archives or restores.
    A patient keeps a phone or an email."""
    require_staff(actor)
    await require_patient_plan(actor)
    cleaned = _cleaned(svc, values)
    patient = await find(actor, patient_id)
    for name, value in cleaned.items():
        setattr(patient, name, value)
    if not patient.phone and not patient.email:
        raise _needs_contact(tuple(k for k in ("phone", "email") if k in cleaned))
    if archived is not None:
        patient.archived_at = (patient.archived_at or utcnow()) if archived else None
    if cleaned:
        patient.unverified = False  # staff confirmed who it is
    patient.updated_at = utcnow()
    patient.search_text = search_text(patient)
    try:
        async with in_transaction():
            await patient.save()
            await sync_user_name(patient)
    except IntegrityError:
        raise _mrn_taken() from None
    audit.staff_did(svc, actor, "patient.update", "patient", patient.id,
                    patient_id=patient.id, fields=sorted(values),
                    archived=archived)
    return patient_view(patient)


async def search_patients(
    svc: Services, actor: Actor, *, q: str, include_archived: bool,
    after: tuple[str, str] | None, limit: int,
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """A case-insensitive substring of the name, MRN, email, phone (digits) or DOB;
    sorted by last name, first name, id."""
    require_staff(actor)
    await require_patient_plan(actor)
    query = Patient.filter(org_id=actor.org_id)
    if not include_archived:
        query = query.filter(archived_at__isnull=True)
    words = q.lower().split()[:5]
    for word in words:
        digits = re.sub(r"[().+-]", "", word)
        if digits.isdigit() and digits != word:
            # "555-0123" is a phone's digits, or a DOB as typed ("2001-07").
            query = query.filter(Q(search_text__contains=word) |
                                 Q(search_text__contains=digits))
        else:
            query = query.filter(search_text__contains=word)
    if after is not None:
        query = query.filter(id__gt=after[1])
    trigrams_usable = bool(words) and all(len(w) >= 3 for w in words)
    async with queries.substring_search(trigrams_usable) as conn:
        rows = await query.order_by("id").limit(limit + 1).using_db(conn)
    page = rows[:limit]
    next_key = ("id", page[-1].id) if len(rows) > limit else None
    # The search words may be PHI (a name, a DOB): only how many profiles were shown.
    audit.staff_did(svc, actor, "patient.search", "patient", None, shown=len(page))
    return [patient_view(p) for p in page], next_key


async def find_or_create(svc: Services, actor: Actor, values: dict[str, Any]) -> Patient:
    """The new-conversation box's "patient": an existing patient with that phone (then
    email) is used before a new one is made."""
    try:
        cleaned = clean(values, svc.settings.default_region)
    except PatientInputError as exc:
        raise ApiError("invalid", f"invalid patient: {exc}",
                       {"fields": {f"to.patient.{k}": v for k, v in exc.fields.items()}}
                       ) from None
    phone, email = cleaned.get("phone"), cleaned.get("email")
    if not phone and not email:
        raise ApiError("invalid", "a patient target needs a phone or an email",
                       {"fields": {"to.patient": "phone or email required"}})
    live = Patient.filter(org_id=actor.org_id, archived_at__isnull=True)
    for key, value in (("phone", phone), ("email", email)):
        if value:
            found = await live.filter(**{key: value}).order_by("created_at").first()
            if found is not None:
                return found
    try:
        async with in_transaction():
            return await new_patient(actor.org_id, cleaned)
    except IntegrityError:
        raise _mrn_taken() from None

