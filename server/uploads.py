"""Receiving a file upload (multipart/form-data) as it streams in.

The file part goes straight into a staging file of the blob store, hashed and counted
chunk by chunk: the moment it passes the limit the request is refused with 413 and the
staged bytes are dropped, so nothing larger than `MAX_UPLOAD_BYTES` is ever kept (and no
more than that plus one chunk is ever written). Small text fields (a message's `body`)
are collected alongside. The whole form is parsed here, not by Starlette, whose parser
spools a file part of any size to disk before anyone can look at it.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from server.errors import ApiError
from storage.blobs import BlobStore, discard

MAX_TEXT_FIELD = 64 * 1024  # the largest non-file field (a message body is far less)
HEAD_BYTES = 8192  # kept in memory: enough to recognise a file's type by its content


@dataclass
class Upload:
    """A received file: staged in the blob store, not yet kept."""

    staged: IO[bytes]
    name: str
    declared_type: str
    size: int
    sha256: str
    head: bytes  # the first bytes, to check the type by content
    utf8: bool  # the whole file decodes as UTF-8 with no NUL (a text file)
    fields: dict[str, str] = field(default_factory=dict)


class _Stager:
    """Takes a file's bytes as they come: counts (413 past the limit), hashes, keeps the
    head, checks for text, writes them to the staging file."""

    def __init__(self, blobs: BlobStore, limit: int, name: str, declared_type: str) -> None:
        self.limit = limit
        self.upload = Upload(staged=blobs.staging(), name=name, declared_type=declared_type,
                             size=0, sha256="", head=b"", utf8=True)
        self._hash = hashlib.sha256()
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def add(self, chunk: bytes) -> None:
        upload = self.upload
        upload.size += len(chunk)
        if upload.size > self.limit:
            raise too_large(self.limit)
        if len(upload.head) < HEAD_BYTES:
            upload.head += chunk[:HEAD_BYTES - len(upload.head)]
        if upload.utf8:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                upload.utf8 = False
            upload.utf8 = upload.utf8 and b"\x00" not in chunk
        self._hash.update(chunk)
        upload.staged.write(chunk)

    def finish(self) -> Upload:
        if self.upload.utf8:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.upload.utf8 = False
        self.upload.sha256 = self._hash.hexdigest()
        return self.upload


async def stage(chunks: AsyncIterator[bytes], blobs: BlobStore, *, limit: int, name: str,
                declared_type: str) -> Upload:
    """A file that arrives as plain bytes (an MMS's media fetched from Twilio) staged in
    `blobs` the same way; 413 (`too_large`) past `limit`, the staged bytes dropped."""
    stager = _Stager(blobs, limit, name, declared_type)
    try:
        async for chunk in chunks:
            stager.add(chunk)
    except BaseException:
        discard(stager.upload.staged)
        raise
    return stager.finish()


def too_large(limit: int) -> ApiError:
    return ApiError("too_large", f"a file is at most {limit} bytes", {"limit": limit})


async def receive(content_type: str, declared_length: int | None,
                  stream: AsyncIterator[bytes], blobs: BlobStore, *, limit: int,
                  file_field: str = "file") -> Upload:
    """The multipart body's file (field `file_field`) staged in `blobs`, and its text
    fields. 413 as soon as the file passes `limit`; 422 for a body that is not a form
    with that file."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError("invalid", f"send the file as multipart/form-data field `{file_field}`",
                       {"fields": {file_field: "required"}})
    if declared_length is not None and declared_length > limit + MAX_TEXT_FIELD:
        raise too_large(limit)  # said up front: nothing is read
    form = _Form(blobs, limit, file_field)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in stream:
            parser.write(chunk)
            form.raise_if_failed()
        parser.finalize()
        form.raise_if_failed()
    except ApiError:
        form.drop()
        raise
    except Exception as exc:  # the parser's own complaint about a malformed body
        form.drop()
        raise ApiError("invalid", f"malformed multipart body: {exc}",
                       {"fields": {file_field: "malformed multipart"}}) from None
    if form.upload is None or not form.finished:
        form.drop()
        raise ApiError("invalid", f"send the file as multipart field `{file_field}`",
                       {"fields": {file_field: "required"}})
    form.upload.fields = form.texts
    return form.upload


class _Form:
    """The parser's callbacks: headers of each part, then its data, to a file or a field."""

    def __init__(self, blobs: BlobStore, limit: int, file_field: str) -> None:
        self._blobs, self._limit, self._file_field = blobs, limit, file_field
        self.upload: Upload | None = None
        self.texts: dict[str, str] = {}
        self.finished = False
        self._failure: ApiError | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part_name = ""
        self._text = bytearray()
        self._stager: _Stager | None = None  # while in the file part

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def drop(self) -> None:
        if self.upload is not None and not self.upload.staged.closed:
            discard(self.upload.staged)

    def _fail(self, error: ApiError) -> None:
        if self._failure is None:
            self._failure = error

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_name = self._header_value = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._text = bytearray()
        if self._part_name != self._file_field or filename is None:
            return
        if self.upload is not None:
            self._fail(ApiError("invalid", "send one file per request",
                                {"fields": {self._file_field: "one file only"}}))
            return
        name = filename.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        self._stager = _Stager(self._blobs, self._limit, name,
                               self._headers.get(b"content-type", b"").decode("latin-1"))
        self.upload = self._stager.upload

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._failure is not None:
            return
        chunk = data[start:end]
        if self._stager is not None:
            try:
                self._stager.add(chunk)
            except ApiError as exc:
                self._fail(exc)
            return
        self._text += chunk
        if len(self._text) > MAX_TEXT_FIELD:
            self._fail(ApiError("invalid", f"field {self._part_name} is too long",
                                {"fields": {self._part_name: "too long"}}))

    def _part_end(self) -> None:
        if self._stager is not None:
            if self._failure is None:
                self._stager.finish()
            self._stager = None
        elif self._part_name:
            self.texts[self._part_name] = self._text.decode("utf-8", "replace")

    def _end(self) -> None:
        self.finished = True
