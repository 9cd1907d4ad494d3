"""File contents ("blobs"), kept by the SHA-256 of their bytes behind a small interface.

The server receives an upload into a staging file (`staging()`), hashing and counting as
it streams, then hands it over with `keep`: the same bytes uploaded twice are kept once.
Rows (storage/models.py `StoredFile`) name a blob by its hash; `remove` is called once no
row names it any more. `LocalBlobStore` keeps them under the data directory; an object
store (S3-compatible) implements the same four methods (`keep` uploads the staged file,
`chunks` streams a GET, `remove` deletes the key).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Protocol

CHUNK = 64 * 1024


class BlobStore(Protocol):
    def staging(self) -> IO[bytes]:
        """A new private file to receive an upload into (named, so `keep` can move it)."""
        ...

    async def keep(self, staged: IO[bytes], sha256: str) -> None:
        """Keep the staged file's bytes as blob `sha256` (closing and consuming it)."""
        ...

    def chunks(self, sha256: str) -> AsyncIterator[bytes]:
        """The blob's bytes, a chunk at a time (FileNotFoundError if it is gone)."""
        ...

    async def remove(self, sha256: str) -> None:
        """Forget the blob (nothing if it is already gone)."""
        ...


class LocalBlobStore:
    """Blobs as files `ROOT/ab/cd/abcd...` (two levels of fan-out keep directories small),
    written by rename from `ROOT/staging`, so a reader never sees half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._staging = root / "staging"

    def path_of(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def staging(self) -> IO[bytes]:
        self._staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        return tempfile.NamedTemporaryFile(dir=self._staging, delete=False)

    async def keep(self, staged: IO[bytes], sha256: str) -> None:
        target = self.path_of(sha256)
        staged.flush()
        os.fsync(staged.fileno())  # on disk before a row may name it
        staged.close()

        def place() -> None:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(staged.name, target)  # same bytes, same name: either copy will do

        await asyncio.to_thread(place)

    async def chunks(self, sha256: str) -> AsyncIterator[bytes]:
        path = self.path_of(sha256)
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def remove(self, sha256: str) -> None:
        await asyncio.to_thread(self.path_of(sha256).unlink, missing_ok=True)


def discard(staged: IO[bytes]) -> None:
    """Drop a staged upload that is not kept (too large, refused type, caller gone)."""
    staged.close()
    Path(staged.name).unlink(missing_ok=True)
