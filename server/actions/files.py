"""Files shared in conversations: accepted by type (by content and by name), kept once
per content in the blob store, sent as a message's attachment, served to participants.

An upload is received into staging as it streams (server/uploads.py: 413 past
`MAX_UPLOAD_BYTES` before anything is kept), then its type is decided from its first
bytes and must agree with its name's extension; only then is it kept and a `StoredFile`
row written, and the message that carries it goes through the send path like any other.
A blob is removed when the last row naming it goes (`release`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from server.actions import access, audit, messages
from server.actions.context import Actor, Services
from server.errors import ApiError, invalid, not_found
from server.ids import new_id, utcnow
from server.uploads import Upload
from storage.blobs import BlobStore, discard
from storage.models import Conversation, Event, Participant, StoredFile

log = logging.getLogger("bloomtext.files")

# The types accepted: the names they may carry, and how their bytes begin (None: text,
# recognised by being UTF-8 without NUL bytes).
ACCEPTED: dict[str, tuple[tuple[str, ...], tuple[bytes, ...] | None]] = {
    "application/pdf": ((".pdf",), (b"%PDF-",)),
    "image/png": ((".png",), (b"\x89PNG\r\n\x1a\n",)),
    "image/jpeg": ((".jpg", ".jpeg"), (b"\xff\xd8\xff",)),
    "image/gif": ((".gif",), (b"GIF87a", b"GIF89a")),
    "text/csv": ((".csv",), None),
    "text/plain": ((".txt",), None),
}
ACCEPTED_NAMES = ", ".join(ext for exts, _ in ACCEPTED.values() for ext in exts)


def extension_for(content_type: str) -> str:
    """The usual extension of an accepted type ("" for another), to name a file that
    came without a name (an MMS's media)."""
    found = ACCEPTED.get(content_type.split(";")[0].strip().lower())
    return found[0][0] if found else ""


def attachment_view(f: StoredFile) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "content_type": f.content_type, "size": f.size}


def content_type_of(upload: Upload) -> str:
    """The type of an upload, from its bytes, which its name must agree with; 422 naming
    `file` otherwise (a PDF named .png, an executable named .pdf, a type not accepted)."""
    name = upload.name.lower()
    if not upload.name or len(upload.name) > 255:
        raise invalid("the file needs a name of 1 to 255 characters", file="bad name")
    if upload.size == 0:
        raise invalid("the file is empty", file="empty")
    by_name = next((t for t, (exts, _) in ACCEPTED.items() if name.endswith(exts)), None)
    if by_name is None:
        raise invalid(f"this type of file is not accepted (accepted: {ACCEPTED_NAMES})",
                      file="type not accepted")
    magic = ACCEPTED[by_name][1]
    fits = upload.utf8 if magic is None else upload.head.startswith(magic)
    if not fits:
        raise invalid(f"the file's content is not what its name says ({by_name})",
                      file="content does not match the name")
    return by_name


async def keep(blobs: BlobStore, upload: Upload, *, org_id: str, conversation_id: str,
               uploader_id: str, content_type: str, source: str = "upload") -> StoredFile:
    """Keep a checked upload's bytes and write its row (not yet attached to a message)."""
    await blobs.keep(upload.staged, upload.sha256)
    return await StoredFile.create(
        id=new_id("fl"), org_id=org_id, conversation_id=conversation_id, event_id=None,
        uploader_id=uploader_id, name=upload.name, content_type=content_type,
        size=upload.size, sha256=upload.sha256, source=source, created_at=utcnow())


async def attach(files: list[StoredFile], event_id: str) -> None:
    await StoredFile.filter(id__in=[f.id for f in files]).update(event_id=event_id)


async def release(blobs: BlobStore, files: list[StoredFile]) -> None:
    """Drop rows that no message carries, and any blob no row names any more."""
    await StoredFile.filter(id__in=[f.id for f in files]).delete()
    for sha256 in {f.sha256 for f in files}:
        if not await StoredFile.exists(sha256=sha256):
            await blobs.remove(sha256)


async def send_file(
    svc: Services, actor: Actor, conversation_id: str,
    receive: Callable[[], Awaitable[Upload]],
) -> tuple[dict[str, Any], bool]:
    """A file (and an optional message body) sent to a conversation; (event, created).

    Who may send is checked before a byte is read; the type once the file is in; the
    message goes through the send path, so a retry with the same `client_id` returns the
    first event (and the second copy of the file is dropped)."""
    assert svc.blobs is not None
    conversation, participant = await access.conversation_access(actor, conversation_id)
    if participant is None and not await access.admin_joins(actor, conversation_id):
        raise not_found("conversation")
    upload = await receive()
    try:
        content_type = content_type_of(upload)
        body = upload.fields.get("body", "")
        client_id = upload.fields.get("client_id") or new_id("up")
        if len(client_id) > 64:
            raise invalid("client_id is 1 to 64 characters", client_id="1..64 characters")
        if len(body) > messages.MAX_BODY:
            raise invalid(f"body is longer than {messages.MAX_BODY} characters", body="too long")
    except ApiError:
        discard(upload.staged)
        raise
    stored = await keep(svc.blobs, upload, org_id=conversation.org_id,  # type: ignore[attr-defined]
                        conversation_id=conversation_id, uploader_id=actor.id,
                        content_type=content_type)
    try:
        event, created = await messages.send_message(
            svc, actor, conversation_id, client_id=client_id, body=body,
            attachments=[attachment_view(stored)])
    except BaseException:
        await release(svc.blobs, [stored])
        raise
    if created:
        await attach([stored], event["id"])
    else:  # a retry: the first upload's message stands
        await release(svc.blobs, [stored])
    return event, created


@dataclass
class Download:
    id: str
    org_id: str
    conversation_id: str
    name: str
    content_type: str
    size: int
    chunks: AsyncIterator[bytes]


async def download(svc: Services, file_id: str, *, user_id: str, org_id: str | None,
                   is_admin: bool = False, only_conversation: str | None = None) -> Download:
    """A file for someone in its conversation (staff, external, bot, or the patient
    through their portal session); 404 for anyone else, for a recalled file, and for one
    whose message was never stored. An admin of the organisation may read the files of
    its patient conversations, as they may read those conversations. A portal session
    reaches only its own conversation (`only_conversation`)."""
    assert svc.blobs is not None
    found = await StoredFile.get_or_none(id=file_id)
    if found is None or found.event_id is None or (
            only_conversation is not None and found.conversation_id != only_conversation):
        raise not_found("file")
    if await Event.exists(id=found.event_id, recalled=True):  # recalled with its message
        raise not_found("file")
    member = await Participant.exists(conversation_id=found.conversation_id, user_id=user_id)
    if not member and not (is_admin and org_id == found.org_id and await Conversation.exists(
            id=found.conversation_id, kind="patient")):
        raise not_found("file")
    return _download(svc.blobs, found)


def _download(blobs: BlobStore, found: StoredFile) -> Download:
    return Download(found.id, found.org_id, found.conversation_id, found.name,
                    found.content_type, found.size, blobs.chunks(found.sha256))


async def download_for(svc: Services, actor: Actor, file_id: str) -> Download:
    found = await download(svc, file_id, user_id=actor.id, org_id=actor.org_id,
                           is_admin=actor.is_admin)
    await _note_download(svc, found, actor=audit.by(actor, found.org_id))
    return found


async def download_for_patient(svc: Services, file_id: str, *, patient_id: str,
                               org_id: str, conversation_id: str) -> Download:
    """A file for the patient, through their portal session (that conversation only)."""
    found = await download(svc, file_id, user_id=patient_id, org_id=org_id,
                           only_conversation=conversation_id)
    await _note_download(svc, found, actor={"actor_id": patient_id, "actor_kind": "patient"})
    return found


async def _note_download(svc: Services, found: Download, *, actor: dict[str, Any]) -> None:
    svc.audit.note(audit.Entry(
        org_id=found.org_id, action="file.download", **actor, target_kind="file",
        target_id=found.id, patient_id=await audit.patient_in(found.conversation_id),
        details={"conversation_id": found.conversation_id}))


async def retrieve_file(svc: Services, actor: Actor, file_id: str, reason: str | None
                        ) -> Download:
    """A file as sent, recalled or not, for an admin of its organisation who gives a
    reason; audited (with the reason) before the bytes go out."""
    reason = audit.admin_reason(actor, reason)
    assert svc.blobs is not None
    found = await StoredFile.get_or_none(id=file_id, org_id=actor.org_id)
    if found is None or found.event_id is None:
        raise not_found("file")
    await svc.audit.record(audit.Entry(
        org_id=found.org_id, action="file.retrieve", **audit.by(actor, found.org_id),
        target_kind="file", target_id=found.id,
        patient_id=await audit.patient_in(found.conversation_id),
        details={"reason": reason, "conversation_id": found.conversation_id}))
    return _download(svc.blobs, found)
