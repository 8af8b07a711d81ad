"""Where bytes live: uploads, canonical datasets, checkpoints and model folders.

Everything goes through `Storage` and opaque keys ("files/file-abc/raw"), never raw paths scattered
over the code. LocalStorage is a directory (one host, or every host mounting the same NFS share);
S3Storage is any S3-compatible object store (`CHATFORGE_STORAGE_URL=s3://bucket/prefix`) for hosts that
share nothing but the database, the broker and the store.

A folder (checkpoint, model) is published atomically: its files first, a manifest last. A reader sees
the old folder or the new one, never half of one. A writer works in a local folder (`writable_dir`) and
publishes it with `put_dir`; for LocalStorage that folder already is the stored one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol

log = logging.getLogger("chatforge.storage")


class Storage(Protocol):
    remote: bool  # True where writable_dir is a local scratch folder that put_dir must publish

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> int: ...
    def put_dir(self, key: str, src: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def read_range(self, key: str, start: int, length: int) -> bytes: ...
    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]: ...
    def writable_dir(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def list_folders(self, key: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def size(self, key: str) -> int: ...
    def location(self, key: str) -> str: ...  # where the key lives, for people (fetches nothing)


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
    remote = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def location(self, key: str) -> str:
        return str(self._path(key))

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
        """Copy `src` to a fresh version folder beside the key, then swap the key's link to it in one
        rename. A reader resolves the link once (`local_path`) and reads one version to the end; the
        version it replaced is kept until the next publish of the key, so a reader still inside it
        is not cut short."""
        dest = self._path(key)
        if Path(src).resolve() == dest.resolve():
            return  # written in place (writable_dir): already published
        dest.parent.mkdir(parents=True, exist_ok=True)
        previous = self._versions(dest)
        version = dest.parent / f"{_VERSION_PREFIX}{dest.name}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(src, version, copy_function=self._copy_file)
            link = dest.parent / f".link-{uuid.uuid4().hex}"
            link.symlink_to(version.name)
            if dest.is_dir() and not dest.is_symlink():  # a folder written in place earlier
                os.rename(dest, dest.parent / f"{_VERSION_PREFIX}{dest.name}-{uuid.uuid4().hex}")
            os.replace(link, dest)  # the swap: readers see the old version or the new one
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        for v in previous:  # older ones; the version just replaced stays for readers still in it
            shutil.rmtree(v, ignore_errors=True)

    def _versions(self, dest: Path) -> list[Path]:
        """The stored versions of a folder key other than the current one."""
        pat = re.compile(rf"^{re.escape(_VERSION_PREFIX + dest.name)}-[0-9a-f]{{32}}$")
        current = dest.resolve() if dest.is_symlink() else None
        if not dest.parent.is_dir():
            return []
        return [c for c in dest.parent.iterdir() if pat.match(c.name) and c != current]

    def _copy_file(self, src: str, dst: str) -> None:
        shutil.copy2(src, dst)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(start)
            return f.read(length)

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local path to read the object (a file or a folder). Remote stores would download here."""
        p = self._path(key).resolve()  # a folder's current version, pinned for this reader
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

    def list_folders(self, key: str) -> list[str]:
        """Names of the folders stored directly under `key`."""
        p = self._path(key)
        return sorted(c.name for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")) if p.is_dir() else []

    def delete(self, key: str) -> None:
        p = self._path(key)
        if p.is_symlink():  # a published folder: the link, then every version of it
            p.unlink()
            for v in self._versions(p):
                shutil.rmtree(v, ignore_errors=True)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        """Bytes of a file, or of every file in a folder (as an object store sums its manifest)."""
        p = self._path(key).resolve()
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return p.stat().st_size



MANIFEST = ".chatforge-manifest.json"  # written last: a folder exists once its manifest does
_VERSION_PREFIX = ".v-"  # a folder's files live under <key>/.v-<version>/, so a republish never mixes two


class _Body(io.RawIOBase):
    """A streamed S3 object body as a file object (readable, closable, usable in `with`)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._body.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@lru_cache(maxsize=4)
def _s3_client(endpoint: str | None):
    """One boto3 client per endpoint (clients are thread-safe). Credentials and region come from the
    standard AWS variables; a custom endpoint (MinIO, moto, Ceph) is addressed path-style."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 5, "mode": "standard"},
                 s3={"addressing_style": "path"} if endpoint else {})
    return boto3.client("s3", endpoint_url=endpoint or None, config=cfg)


class S3Storage:
    """Any S3-compatible store. Files are single objects (streamed in multipart uploads, read streamed or
    by range); folders are published as files + manifest. `local_path` reads through a bounded LRU cache
    in `cache_dir` (models and adapters are fetched once per host); `writable_dir` is a local scratch
    folder that the writer publishes with `put_dir`."""

    remote = True

    def __init__(self, url: str, cache_dir: Path, scratch_dir: Path, *, cache_bytes: int = 50 * 1024**3,
                 part_bytes: int = 8 * 1024**2, endpoint: str | None = None) -> None:
        m = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not m:
            raise ValueError(f"storage URL must look like s3://bucket/prefix, not {url!r}")
        self.bucket, self.prefix = m.group(1), m.group(2).strip("/")
        self.cache_dir, self.scratch_dir = Path(cache_dir), Path(scratch_dir)
        self.cache_bytes, self.part_bytes = cache_bytes, max(part_bytes, 5 * 1024**2)
        self.client = _s3_client(endpoint if endpoint is not None else os.environ.get("AWS_ENDPOINT_URL"))
        self._lock = threading.Lock()

    # --- keys
    def _obj(self, key: str) -> str:
        k = _safe_key(key)
        return f"{self.prefix}/{k}" if self.prefix else k

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._obj(key)}"

    def _missing(self, e: Exception) -> bool:
        code = getattr(e, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def _head(self, obj: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=obj)
        except ClientError as e:
            if self._missing(e):
                return None
            raise

    def _manifest(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self._obj(key)}/{MANIFEST}")["Body"]
        except ClientError as e:
            if self._missing(e):
                return None
            raise
        return json.loads(body.read())

    def _resolve(self, key: str) -> tuple[str, str, dict | None, str] | None:
        """What `key` names: ("file", key, None, "") for an object, ("dir", folder, manifest, sub) for a
        published folder or a path inside one (sub is that path relative to the folder), else None."""
        key = _safe_key(key)
        if self._head(self._obj(key)) is not None:
            return ("file", key, None, "")
        parts = key.split("/")
        for n in range(len(parts), 0, -1):
            folder = "/".join(parts[:n])
            man = self._manifest(folder)
            if man is None:
                continue
            sub = "/".join(parts[n:])
            if not sub or sub in man["files"] or any(f.startswith(sub + "/") for f in man["files"]):
                return ("dir", folder, man, sub)
            return None
        return None

    # --- writes
    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> int:
        """Multipart upload, one part in memory at a time; nothing is left behind if the stream is too large
        or breaks (the upload is aborted). Small streams are one PUT."""
        obj = self._obj(key)
        n, upload_id, parts = 0, None, []
        try:
            while True:
                chunk = _read_full(stream, self.part_bytes)
                n += len(chunk)
                if max_bytes is not None and n > max_bytes:
                    raise TooLarge(max_bytes)
                if upload_id is None and len(chunk) < self.part_bytes:  # the whole stream fits in one part
                    self.client.put_object(Bucket=self.bucket, Key=obj, Body=chunk)
                    return n
                if upload_id is None:
                    upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=obj)["UploadId"]
                if chunk or not parts:
                    r = self.client.upload_part(Bucket=self.bucket, Key=obj, UploadId=upload_id,
                                                PartNumber=len(parts) + 1, Body=chunk)
                    parts.append({"ETag": r["ETag"], "PartNumber": len(parts) + 1})
                if len(chunk) < self.part_bytes:
                    break
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=obj, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
            upload_id = None
            return n
        finally:
            if upload_id is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=obj, UploadId=upload_id)

    def _upload_file(self, path: Path, obj: str) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client.upload_file(str(path), self.bucket, obj,
                                Config=TransferConfig(multipart_threshold=self.part_bytes,
                                                      multipart_chunksize=self.part_bytes))

    def put_dir(self, key: str, src: Path) -> None:
        """Upload a folder under a fresh version, then write its manifest (the publish), then delete the
        previous version. Readers see the old folder until the manifest is replaced."""
        key, src = _safe_key(key), Path(src)
        version = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        base = f"{self._obj(key)}/{_VERSION_PREFIX}{version}"
        files = {}
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                self._upload_file(p, f"{base}/{rel}")
                files[rel] = p.stat().st_size
        manifest = {"version": version, "files": files, "published_at": time.time()}
        self.client.put_object(Bucket=self.bucket, Key=f"{self._obj(key)}/{MANIFEST}",
                               Body=json.dumps(manifest).encode(), ContentType="application/json")
        self._delete_objects(f"{self._obj(key)}/{_VERSION_PREFIX}", keep=f"{base}/")

    def writable_dir(self, key: str) -> Path:
        p = self.scratch_dir / _safe_key(key)
        p.mkdir(parents=True, exist_ok=True)
        return p

    # --- reads
    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._obj(key))["Body"]
        except ClientError as e:
            if self._missing(e):
                raise FileNotFoundError(key) from e
            raise
        return io.BufferedReader(_Body(body), buffer_size=1 << 20)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        r = self.client.get_object(Bucket=self.bucket, Key=self._obj(key),
                                   Range=f"bytes={start}-{start + length - 1}")
        return r["Body"].read()

    def exists(self, key: str) -> bool:
        return self._resolve(key) is not None

    def size(self, key: str) -> int:
        found = self._resolve(key)
        if found is None:
            raise FileNotFoundError(key)
        kind, folder, man, sub = found
        if kind == "file":
            return self._head(self._obj(folder))["ContentLength"]
        if sub in man["files"]:
            return man["files"][sub]
        return sum(v for f, v in man["files"].items() if not sub or f.startswith(sub + "/"))

    def list_folders(self, key: str) -> list[str]:
        """Names of the published folders directly under `key`."""
        prefix = f"{self._obj(key)}/"
        out = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                rest = o["Key"][len(prefix):].split("/")
                if len(rest) == 2 and rest[1] == MANIFEST:
                    out.add(rest[0])
        return sorted(out)

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local copy of the object or folder, from this host's read-through cache (fetched on first
        use, refreshed when the stored version changes, evicted least recently used first)."""
        for attempt in range(3):
            found = self._resolve(key)
            if found is None:
                raise FileNotFoundError(key)
            kind, base, man, sub = found
            version = (self._head(self._obj(base)) or {}).get("ETag", "").strip('"') if kind == "file" \
                else man["version"]
            entry = self.cache_dir / hashlib.sha256(f"{base}\0{version}".encode()).hexdigest()[:32]
            if not (entry / "meta.json").exists():
                try:
                    self._fetch(kind, base, man, version, entry)
                except FileNotFoundError:  # republished while we read: resolve the new version
                    if attempt == 2:
                        raise
                    continue
            os.utime(entry / "meta.json")  # last use, for LRU eviction
            self._evict(keep=entry)
            data = entry / "data"
            yield data if kind == "file" and not sub else data / sub
            return

    def _fetch(self, kind: str, base: str, man: dict | None, version: str, entry: Path) -> None:
        from botocore.exceptions import ClientError

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir))
        try:
            try:
                if kind == "file":
                    self.client.download_file(self.bucket, self._obj(base), str(tmp / "data"))
                    nbytes = (tmp / "data").stat().st_size
                else:
                    root = f"{self._obj(base)}/{_VERSION_PREFIX}{version}"
                    for rel in man["files"]:
                        dest = tmp / "data" / rel
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        self.client.download_file(self.bucket, f"{root}/{rel}", str(dest))
                    (tmp / "data").mkdir(exist_ok=True)
                    nbytes = sum(man["files"].values())
            except ClientError as e:
                if self._missing(e) or getattr(e, "response", {}).get("Error", {}).get("Code") == "404":
                    raise FileNotFoundError(base) from e
                raise
            (tmp / "meta.json").write_text(json.dumps({"key": base, "version": version, "bytes": nbytes}))
            try:
                tmp.rename(entry)
            except OSError:  # another process on this host fetched it first
                pass
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _evict(self, keep: Path) -> None:
        """Delete least recently used cache entries until the cache fits `cache_bytes` (never `keep`)."""
        with self._lock:
            entries = []
            for e in self.cache_dir.iterdir():
                try:
                    meta = e / "meta.json"
                    entries.append((meta.stat().st_mtime, json.loads(meta.read_text())["bytes"], e))
                except (OSError, ValueError, KeyError):
                    continue
            total = sum(b for _, b, _ in entries)
            for _, nbytes, e in sorted(entries, key=lambda t: t[0]):
                if total <= self.cache_bytes:
                    break
                if e == keep:
                    continue
                gone = e.with_name(f".evict-{e.name}-{uuid.uuid4().hex[:6]}")
                try:
                    e.rename(gone)  # a reader never sees a half-deleted entry
                except OSError:
                    continue
                shutil.rmtree(gone, ignore_errors=True)
                total -= nbytes
                log.info("storage cache: evicted %s", e.name)

    def cached_bytes(self) -> int:
        total = 0
        for e in self.cache_dir.glob("*/meta.json"):
            try:
                total += json.loads(e.read_text())["bytes"]
            except (OSError, ValueError, KeyError):
                pass
        return total

    # --- delete
    def _delete_objects(self, prefix: str, keep: str | None = None) -> None:
        batch: list[dict] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                if keep is None or not o["Key"].startswith(keep):
                    batch.append({"Key": o["Key"]})
                if len(batch) == 1000:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                    batch = []
        if batch:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def delete(self, key: str) -> None:
        """Delete an object or a folder (its manifest first, so it stops existing at once)."""
        obj = self._obj(key)
        self.client.delete_object(Bucket=self.bucket, Key=f"{obj}/{MANIFEST}")
        self.client.delete_object(Bucket=self.bucket, Key=obj)
        self._delete_objects(f"{obj}/")


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Up to n bytes (fewer only at the end of the stream; raw streams may return short reads)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def restore_newest_folder(storage: Storage, key: str, local_dir: Path) -> str | None:
    """Copy the newest published folder under `key` ("checkpoint-12" beats "checkpoint-8") into `local_dir`
    unless it is already there. A remote store's way to resume on a host that never saw the run."""
    names = storage.list_folders(key)
    if not storage.remote or not names:
        return None
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    newest = max(names, key=lambda n: (int(m.group(1)) if (m := re.search(r"(\d+)$", n)) else -1, n))
    dest = Path(local_dir) / newest
    if dest.exists():
        return newest
    with storage.local_path(f"{key}/{newest}") as src:
        tmp = dest.with_name(f".restore-{newest}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(dest)
    return newest


def get_storage() -> Storage:
    from chatforge.settings import get_settings

    s = get_settings()
    if s.storage_url:
        return S3Storage(s.storage_url, s.cache_dir, s.scratch_dir, cache_bytes=s.storage_cache_bytes,
                         part_bytes=s.storage_part_bytes)
    return LocalStorage(s.storage_dir)
