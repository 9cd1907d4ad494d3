"""Patient import from CSV, as a background job with progress.

The request body is streamed to a private temporary file (refused past the size limit
before it is all read), the header is checked before answering, and the rows are then
read one at a time and written in batches, so a 100,000-row file never sits in memory.

- UTF-8 with or without a BOM; comma or semicolon (sniffed from the header line).
- Headers matched loosely: case, spaces, `_` and `-` do not matter, and common names
  are known (`First Name`, `first_name`, `DOB`, `Date of birth`, `Mobile`, ...).
- Dates: ISO and US (`MM/DD/YYYY`).
- Upsert: a row matches the patient with its MRN, else with its phone, else with its
  email; a matched patient is updated with the row's non-empty cells (or left as it is),
  otherwise a new patient is made. A row that matches two different patients by phone
  or email is rejected rather than guessed. Two rows of one file that match the same
  patient both apply, in order.
- A cell starting with `=`, `+`, `-` or `@` is stored as text, as it was typed (a phone
  like `+1 415...` is still a phone); exports escape such cells.
- Each rejected row is reported with its line (the header is line 1) and reason.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import IO, Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from realtime.hub import user_topic
from server.actions import audit, patients
from server.actions.context import Actor, Services
from server.actions.orgs import require_patient_plan
from server.errors import ApiError, not_found
from server.ids import iso, new_id, utcnow
from storage import db
from storage.models import Job, Patient, User
from storage.queries import refresh_statistics

log = logging.getLogger("bloomtext.imports")

MAX_JOB_ERRORS = 5000  # rows reported one by one; `rejected` counts them all
BATCH_ROWS = 500
STALE_SECONDS = 120  # a running job not heard of for this long died with its node
# Statistics are refreshed when an import has created this many patients, then at every
# doubling, and at the end: the planner must know the directory grew (storage/queries.py).
FIRST_ANALYZE = 2000
ANALYZED_TABLES = ("patients", "users")

ALIASES = {
    "first_name": {"firstname", "first", "givenname", "forename"},
    "last_name": {"lastname", "last", "surname", "familyname"},
    "dob": {"dob", "dateofbirth", "birthdate", "birthday", "born"},
    "mrn": {"mrn", "medicalrecordnumber", "recordnumber", "patientid", "chartnumber"},
    "email": {"email", "emailaddress", "mail"},
    "phone": {"phone", "phonenumber", "mobile", "mobilephone", "cell", "cellphone", "tel",
              "telephone"},
}
_BY_KEY = {alias: field for field, names in ALIASES.items() for alias in names}


def header_key(cell: str) -> str:
    return re.sub(r"[\s_\-.]", "", cell.strip().lstrip("\ufeff").lower())


def map_header(cells: list[str]) -> dict[int, str]:
    """Column index -> field, for the columns we know (the first of each wins)."""
    found: dict[int, str] = {}
    for i, cell in enumerate(cells):
        field = _BY_KEY.get(header_key(cell))
        if field and field not in found.values():
            found[i] = field
    return found


def job_view(job: Job) -> dict[str, Any]:
    status = job.status
    message = job.message
    if status == "running" and job.updated_at < utcnow() - timedelta(seconds=STALE_SECONDS):
        status, message = "failed", "interrupted: the server restarted during the import"
    view = {
        "id": job.id, "kind": job.kind, "status": status, "total": job.total, "done": job.done,
        "created": job.created, "updated": job.updated, "rejected": job.rejected,
        "progress": _progress(job), "errors": job.errors or [], "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
    }
    if message:
        view["message"] = message
    return view


def _progress(job: Job) -> float:
    """0..1 through the file (`total` only counts the rows read so far)."""
    if job.status == "done" or job.size <= 0:
        return 1.0 if job.status == "done" else 0.0
    return round(min(job.position / job.size, 1.0), 3)


async def get_job(svc: Services, actor: Actor, job_id: str) -> dict[str, Any]:
    if actor.user.kind not in ("member", "bot"):
        raise not_found("job")
    job = await Job.get_or_none(id=job_id, org_id=actor.org_id)
    if job is None:
        raise not_found("job")
    return job_view(job)


async def _spool(chunks: AsyncIterator[bytes], limit: int) -> IO[bytes]:
    """The body in a private temporary file; 413 as soon as it passes `limit`."""
    spool = tempfile.TemporaryFile()  # unlinked at once: never left behind with PHI
    size = 0
    utf8 = codecs.getincrementaldecoder("utf-8")()  # checked as it arrives, not later
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ApiError("too_large", f"an import is at most {limit} bytes",
                               {"limit": limit})
            if b"\x00" in chunk:
                raise ApiError("invalid", "this is not a CSV file (it holds binary data)",
                               {"fields": {"file": "not CSV"}})
            try:
                utf8.decode(chunk)
            except UnicodeDecodeError:
                raise ApiError("invalid", "the file is not UTF-8 text: save it as CSV UTF-8",
                               {"fields": {"file": "not UTF-8"}}) from None
            spool.write(chunk)
        try:
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ApiError("invalid", "the file is not UTF-8 text: save it as CSV UTF-8",
                           {"fields": {"file": "not UTF-8"}}) from None
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _size(spool: IO[bytes]) -> int:
    here = spool.tell()
    end = spool.seek(0, 2)
    spool.seek(here)
    return end


def _rows(spool: IO[bytes]) -> tuple[list[str], Iterator[list[str]]]:
    """The header cells and an iterator over the remaining rows (decoded lazily)."""
    text = codecs.getreader("utf-8-sig")(spool, errors="strict")
    first = text.readline()
    if not first.strip():
        raise ApiError("invalid", "the file is empty or its first line is blank: the first "
                       "line must name the columns", {"fields": {"file": "no header"}})
    delimiter = ";" if first.count(";") > first.count(",") else ","
    header = next(csv.reader([first], delimiter=delimiter))
    return header, csv.reader(text, delimiter=delimiter)


async def start_import(
    svc: Services, actor: Actor, open_body: Callable[[], Awaitable[AsyncIterator[bytes]]], *,
    declared_length: int | None, idempotency_key: str | None,
) -> tuple[dict[str, Any], bool]:
    """Check the caller, then the file up front, then import in the background. Returns
    ({job_id}, created); the same Idempotency-Key returns the first job. `open_body` is
    only called once the caller may import: nothing is read for a caller who may not."""
    await require_patient_plan(actor)
    if actor.user.kind not in ("member", "bot"):
        raise ApiError("forbidden", "only members of this organisation may import patients")
    limit = svc.settings.max_import_bytes
    if declared_length is not None and declared_length > limit + 65536:  # + multipart
        raise ApiError("too_large", f"an import is at most {limit} bytes", {"limit": limit})
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 200:
            raise ApiError("invalid", "Idempotency-Key is 1 to 200 characters",
                           {"fields": {"Idempotency-Key": "1..200 characters"}})
        earlier = await Job.get_or_none(org_id=actor.org_id, idempotency_key=idempotency_key)
        if earlier is not None:
            return {"job_id": earlier.id}, False
    spool = await _spool(await open_body(), limit)
    try:
        try:
            header, rows = _rows(spool)
        except UnicodeDecodeError:
            raise ApiError("invalid", "the file is not UTF-8 text: save it as CSV UTF-8",
                           {"fields": {"file": "not UTF-8"}}) from None
        columns = map_header(header)
        if not ({"phone", "email", "mrn"} & set(columns.values())):
            raise ApiError(
                "invalid", "no usable header: the first line must name the columns, with "
                "at least one of phone, email or MRN (e.g. first_name,last_name,dob,mrn,"
                "email,phone)", {"fields": {"file": "no usable header"},
                                 "header": header[:20]})
        now = utcnow()
        try:
            job = await Job.create(id=new_id("jb"), org_id=actor.org_id,
                                   created_by_id=actor.id, kind="patient_import",
                                   idempotency_key=idempotency_key, size=_size(spool),
                                   created_at=now, updated_at=now)
        except IntegrityError:  # the same key, raced
            earlier = await Job.get(org_id=actor.org_id, idempotency_key=idempotency_key)
            spool.close()
            return {"job_id": earlier.id}, False
    except BaseException:
        spool.close()
        raise
    task = asyncio.get_running_loop().create_task(
        _run(svc, actor, job, spool, columns, rows))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return {"job_id": job.id}, True


_running: set[asyncio.Task[None]] = set()


async def _run(svc: Services, actor: Actor, job: Job, spool: IO[bytes],
               columns: dict[int, str], rows: Iterator[list[str]]) -> None:
    importer = _Importer(svc, actor, job, spool)
    try:
        with contextlib.closing(spool):
            batch: list[tuple[int, dict[str, str]]] = []
            line = 1
            while True:
                try:
                    cells = next(rows)
                except StopIteration:
                    break
                except UnicodeDecodeError:
                    importer.reject(line + 1, "the file is not UTF-8 text from here on")
                    break
                except csv.Error as exc:
                    line += 1
                    importer.reject(line, f"not a CSV row: {exc}")
                    continue
                line += 1
                if not any(c.strip() for c in cells):
                    continue  # a blank line is not a row
                batch.append((line, {f: cells[i] for i, f in columns.items()
                                     if i < len(cells)}))
                if len(batch) >= BATCH_ROWS:
                    await importer.apply(batch)
                    batch = []
            if batch:
                await importer.apply(batch)
        await importer.finish("done")
    except asyncio.CancelledError:
        await importer.finish("failed", "interrupted: the server is shutting down")
        raise
    except Exception as exc:
        log.exception("import %s failed", job.id)
        await importer.finish("failed", f"the import stopped: {type(exc).__name__}")


class _Importer:
    def __init__(self, svc: Services, actor: Actor, job: Job, spool: IO[bytes]) -> None:
        self._spool = spool
        self._next_analyze = FIRST_ANALYZE
        self._svc = svc
        self._actor = actor
        self._job = job
        self._org = actor.org_id

    def reject(self, line: int, message: str) -> None:
        job = self._job
        job.total += 1
        job.done += 1
        job.rejected += 1
        if len(job.errors) < MAX_JOB_ERRORS:
            job.errors.append({"line": line, "message": message})

    async def apply(self, batch: list[tuple[int, dict[str, str]]]) -> None:
        region = self._svc.settings.default_region
        good: list[tuple[int, dict[str, Any]]] = []
        for line, raw in batch:
            try:
                values = patients.clean(raw, region, us_dates=True)
            except patients.PatientInputError as exc:
                self.reject(line, "; ".join(f"{k} {v}" for k, v in exc.fields.items()))
                continue
            if not any(values.get(k) for k in ("mrn", "phone", "email")):
                self.reject(line, "needs an MRN, a phone or an email")
                continue
            good.append((line, values))
        if good:
            await self._upsert(good)
            if self._job.created >= self._next_analyze:
                self._next_analyze *= 2
                await refresh_statistics(db.connection(), ANALYZED_TABLES)
        await self._save_progress()

    async def _upsert(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        job = self._job
        live = Patient.filter(org_id=self._org)
        mrns = {v["mrn"] for _, v in rows if v.get("mrn")}
        phones = {v["phone"] for _, v in rows if v.get("phone")}
        emails = {v["email"] for _, v in rows if v.get("email")}
        by_mrn = {p.mrn: p for p in await live.filter(mrn__in=mrns)} if mrns else {}
        by_phone: dict[str, list[Patient]] = {}
        by_email: dict[str, list[Patient]] = {}
        if phones:
            for p in await live.filter(phone__in=phones, archived_at__isnull=True):
                by_phone.setdefault(p.phone or "", []).append(p)
        if emails:
            for p in await live.filter(email__in=emails, archived_at__isnull=True):
                by_email.setdefault(p.email or "", []).append(p)
        changed: dict[str, Patient] = {}
        # New patients are written together at the end of the batch (two statements
        # instead of two per row); a later row of the same batch may still update one.
        created: dict[str, Patient] = {}
        async with in_transaction():
            for line, values in rows:
                match, why = self._match(values, by_mrn, by_phone, by_email)
                if why:
                    self.reject(line, why)
                    continue
                job.total += 1
                job.done += 1
                if match is None:
                    patient = patients.build_patient(self._org, values)
                    created[patient.id] = patient
                    by_mrn.setdefault(patient.mrn or "", patient)
                    if patient.phone:
                        by_phone.setdefault(patient.phone, []).append(patient)
                    if patient.email:
                        by_email.setdefault(patient.email, []).append(patient)
                    job.created += 1
                    continue
                if values.get("mrn") and match.mrn and values["mrn"] != match.mrn:
                    job.total -= 1
                    job.done -= 1
                    self.reject(line, "matches a patient by phone or email who has another MRN")
                    continue
                updates = {k: v for k, v in values.items()
                           if v is not None and getattr(match, k) != v}
                if updates:
                    for k, v in updates.items():
                        setattr(match, k, v)
                    if updates.get("mrn"):
                        by_mrn[updates["mrn"]] = match
                    match.search_text = patients.search_text(match)
                    match.updated_at = utcnow()
                    if match.id not in created:
                        changed[match.id] = match
                    job.updated += 1
            if created:
                await User.bulk_create([patients.patient_user(p) for p in created.values()])
                await Patient.bulk_create(list(created.values()))
            for patient in changed.values():
                await patient.save()
                await patients.sync_user_name(patient)

    @staticmethod
    def _match(values: dict[str, Any], by_mrn: dict[str, Patient],
               by_phone: dict[str, list[Patient]], by_email: dict[str, list[Patient]]
               ) -> tuple[Patient | None, str | None]:
        if values.get("mrn"):
            found = by_mrn.get(values["mrn"])
            if found is not None:
                return found, None
        for key, index in (("phone", by_phone), ("email", by_email)):
            value = values.get(key)
            if value:
                candidates = {p.id: p for p in index.get(value, [])}
                if len(candidates) > 1:
                    return None, (f"{key} matches {len(candidates)} patients: add the MRN to "
                                  "say which")
                if candidates:
                    return next(iter(candidates.values())), None
        return None, None

    async def _save_progress(self) -> None:
        job = self._job
        job.updated_at = utcnow()
        if not self._spool.closed:
            job.position = self._spool.tell()  # the reader's buffer ahead: close enough
        await job.save(update_fields=["total", "done", "created", "updated", "rejected",
                                      "position", "errors", "updated_at"])
        self._publish()

    def _publish(self) -> None:
        view = job_view(self._job)
        view.pop("errors")  # the report is read once, from GET /jobs/<id>
        self._svc.hub.publish(user_topic(self._actor.id), {"type": "job", "job": view})

    async def finish(self, status: str, message: str | None = None) -> None:
        job = self._job
        if job.created + job.updated >= FIRST_ANALYZE:
            try:
                await refresh_statistics(db.connection(), ANALYZED_TABLES)
            except Exception:
                log.exception("could not refresh statistics after import %s", job.id)
        job.status = status
        job.message = message
        job.finished_at = job.updated_at = utcnow()
        try:
            await job.save()
        except Exception:
            log.exception("could not record the end of import %s", job.id)
            return
        self._publish()
        audit.staff_did(self._svc, self._actor, "patient.import", "job", job.id,
                        status=status, created=job.created, updated=job.updated,
                        rejected=job.rejected)

