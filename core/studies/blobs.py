"""Where DICOM files and report PDFs are kept: a folder (default) or an S3 bucket.

Keys are made by the store's caller from hashes, never from a file's own names or
UIDs, so nothing read from a DICOM file becomes part of a path. A file arrives as
a local *scratch* file (written while it was received) and ``put`` moves it in
atomically: a reader sees the whole file or none.

Two kinds of leftovers can follow a process that is killed: a half-written
scratch file, and a blob moved in whose database row never committed. Both are
found through locks that the kernel drops when their process dies: a scratch
file is locked while it is in use, and a blob is *claimed* (a locked marker in
the scratch folder) from just before ``put`` until its transaction has ended.
``sweep_scratch`` and ``abandoned_claims`` only ever touch what no living process
holds, so they are safe to run while other processes are receiving files.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

CLAIM_SUFFIX = ".claim"


class BlobStore(Protocol):
    scratch: Path

    def put(self, key: str, source: Path) -> None:
        """Move the finished scratch file ``source`` to ``key`` (a blob already there is replaced)."""

    def put_many(self, items: list[tuple[str, Path]], *, prepared: bool = False) -> None:
        """``put`` for several ``(key, source)``; each move is whole, the set is not. ``prepared``:
        the caller has had them through ``prepare`` already."""

    def prepare(self, items: list[tuple[str, Path]]) -> None:
        """Make the finished scratch files of ``(key, source)`` durable, and ready what their keys
        need, ahead of ``put_many``: it then costs less while a database lock may be held."""

    def open(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path | None:
        """A path on this machine to serve the blob from, if the store has one."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


def _create_locked(path: Path) -> int | None:
    """Create ``path`` (and its folder, the first time) and hold an exclusive lock on it; None if
    it was swept before we locked it."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
            return descriptor
    except FileNotFoundError:
        pass
    os.close(descriptor)
    return None


def _lock_if_abandoned(path: Path) -> int | None:
    """Lock ``path`` if no living process holds it (and it is still that file); else None."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
            return descriptor
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(descriptor)
    return None


@contextmanager
def scratch_file(store: BlobStore, suffix: str = "") -> Iterator[Path]:
    """A new empty file in the store's scratch folder, removed afterwards unless moved in."""
    descriptor = None
    while descriptor is None:
        path = store.scratch / f"{uuid.uuid4().hex}{suffix}.part"
        descriptor = _create_locked(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(descriptor)


def sweep_scratch(store: BlobStore) -> int:
    """Remove the scratch files of processes that died while receiving (never a living one's)."""
    removed = 0
    if store.scratch.is_dir():
        for leftover in store.scratch.glob("*.part"):
            descriptor = _lock_if_abandoned(leftover)
            if descriptor is not None:
                leftover.unlink(missing_ok=True)
                os.close(descriptor)
                removed += 1
    return removed


class Claim:
    """A blob that is in the store while its database row is not yet committed."""

    def __init__(self, path: Path, key: str, descriptor: int):
        self.path, self.key, self._descriptor = path, key, descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            self.path.unlink(missing_ok=True)  # unlinked before unlocking: a sweeper never sees it free
            os.close(self._descriptor)
            self._descriptor = None


def _claim_name(key: str) -> str:
    return key.replace("/", "__") + CLAIM_SUFFIX  # keys are [a-z0-9/] (see service.blob_key)


def claim(store: BlobStore, key: str) -> Claim:
    """Mark ``key`` as about to be put by this process, before ``put`` is called."""
    path = store.scratch / _claim_name(key)
    descriptor = None
    while descriptor is None:
        descriptor = _create_locked(path)
    return Claim(path, key, descriptor)


def abandoned_claims(store: BlobStore) -> Iterator[Claim]:
    """Claims whose process died before settling them; the caller checks each key and releases it."""
    if not store.scratch.is_dir():
        return
    for path in sorted(store.scratch.glob(f"*{CLAIM_SUFFIX}")):
        descriptor = _lock_if_abandoned(path)
        if descriptor is not None:
            yield Claim(path, path.name[: -len(CLAIM_SUFFIX)].replace("__", "/"), descriptor)


_syncing: ThreadPoolExecutor | None = None


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _syncer() -> ThreadPoolExecutor:
    global _syncing
    if _syncing is None:
        _syncing = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
    return _syncing


def _fsync_all(paths: list[Path]) -> None:
    """fsync files or folders side by side: the file system commits its journal once for all
    of them, where one after another each would wait for a commit of its own."""
    if len(paths) <= 1:
        for path in paths:
            _fsync(path)
        return
    for done in [_syncer().submit(_fsync, path) for path in paths]:
        done.result()


def _made_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders whose entries changed (to sync)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return [made.parent for made in missing]


class FilesystemBlobs:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.scratch = self.root / "scratch"  # same file system as the blobs, so rename is atomic

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, source: Path) -> None:
        self.put_many([(key, source)])

    def put_many(self, items: list[tuple[str, Path]], *, prepared: bool = False) -> None:
        if not prepared:
            self.prepare(items)
        for key, source in items:
            os.replace(source, self._path(key))
        # the renames survive a power cut
        _fsync_all(sorted({self._path(key).parent for key, _source in items}))

    def prepare(self, items: list[tuple[str, Path]]) -> None:
        folders: set[Path] = set()
        for key, _source in items:
            folders.update(_made_folders(self._path(key).parent))
        _fsync_all([source for _key, source in items] + sorted(folders))  # the files, and the new folders

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        """Every blob's key (scratch excluded), for checks and maintenance."""
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root)
            if path.is_file() and relative.parts[0] != self.scratch.name:
                yield relative.as_posix()


class S3Blobs:
    """An S3-compatible bucket through boto3 (``pip install filmless[s3]``)."""

    def __init__(self, config):
        try:
            import boto3
        except ImportError:  # pragma: no cover - reported at start-up with the fix
            raise RuntimeError("storage kind 's3' needs boto3: pip install 'filmless[s3]'") from None
        self.bucket, self.prefix = config.bucket, config.prefix
        self.scratch = Path(config.scratch)
        self.client = boto3.client("s3", endpoint_url=config.endpoint_url, region_name=config.region,
                                   aws_access_key_id=config.access_key, aws_secret_access_key=config.secret_key)

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def put(self, key: str, source: Path) -> None:
        self.client.upload_file(str(source), self.bucket, self._key(key))  # S3 objects appear whole or not at all
        Path(source).unlink(missing_ok=True)

    def put_many(self, items: list[tuple[str, Path]], *, prepared: bool = False) -> None:
        for key, source in items:
            self.put(key, source)

    def prepare(self, items: list[tuple[str, Path]]) -> None:
        pass  # an upload is whole once S3 has answered

    def open(self, key: str) -> BinaryIO:
        # Downloaded to a temporary file: pydicom and the renderers need to seek.
        handle = tempfile.TemporaryFile()
        self.client.download_fileobj(self.bucket, self._key(key), handle)
        handle.seek(0)
        return handle

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]


def make_store(storage) -> BlobStore:
    return S3Blobs(storage) if storage.kind == "s3" else FilesystemBlobs(storage.path)
