"""Where bytes live: uploads, canonical datasets, checkpoints and model folders.

Everything goes through `Storage` and opaque keys ("files/file-abc/raw"), never raw paths scattered
over the code. LocalStorage is a directory (shared by API and workers on one host, or over NFS);
an S3-compatible store can implement the same five methods for hosts that share nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol


class Storage(Protocol):
    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> int: ...
    def put_dir(self, key: str, src: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]: ...
    def writable_dir(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def size(self, key: str) -> int: ...


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


def _safe_key(key: str) -> str:
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return "/".join(parts)


class LocalStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> int:
        """Copy a stream in chunks to a temporary file, then rename: readers never see half a file,
        and nothing is left behind if the stream is too large or breaks."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=dest.parent)
        n = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 20):
                    n += len(chunk)
                    if max_bytes is not None and n > max_bytes:
                        raise TooLarge(max_bytes)
                    out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n

    def put_dir(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dir-", dir=dest.parent))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local path to read the object (a file or a folder). Remote stores would download here."""
        p = self._path(key)
        if not p.exists():
            raise FileNotFoundError(key)
        yield p

    def writable_dir(self, key: str) -> Path:
        """A local folder a worker writes into (job outputs, checkpoints). Remote stores would sync it
        back with put_dir; locally it simply is the stored folder."""
        p = self._path(key)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        p = self._path(key)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size


def get_storage() -> Storage:
    from chatforge.settings import get_settings

    return LocalStorage(get_settings().storage_dir)
