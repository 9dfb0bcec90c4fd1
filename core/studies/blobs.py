"""Where DICOM files and report PDFs are kept: a folder (default) or an S3 bucket.

Keys are made by the store's caller from hashes, never from a file's own names or
UIDs, so nothing read from a DICOM file becomes part of a path. A file arrives as
a local *scratch* file (written while it was received) and ``put`` moves it in
atomically: a reader sees the whole file or none.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol


class BlobStore(Protocol):
    scratch: Path

    def put(self, key: str, source: Path) -> None:
        """Move the finished scratch file ``source`` to ``key`` (replacing nothing that exists)."""

    def open(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path | None:
        """A path on this machine to serve the blob from, if the store has one."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


@contextmanager
def scratch_file(store: BlobStore, suffix: str = "") -> Iterator[Path]:
    """A new empty file in the store's scratch folder, removed afterwards unless moved in."""
    store.scratch.mkdir(parents=True, exist_ok=True)
    path = store.scratch / f"{uuid.uuid4().hex}{suffix}.part"
    path.touch(mode=0o600)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def sweep_scratch(store: BlobStore) -> int:
    """Remove files left in scratch by a process that was killed mid-receive."""
    removed = 0
    if store.scratch.is_dir():
        for leftover in store.scratch.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


class FilesystemBlobs:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.scratch = self.root / "scratch"  # same file system as the blobs, so rename is atomic

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(source, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


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


def make_store(storage) -> BlobStore:
    return S3Blobs(storage) if storage.kind == "s3" else FilesystemBlobs(storage.path)


def copy_into(store: BlobStore, key: str, stream: BinaryIO) -> None:
    """Store a stream under ``key`` (used for report PDFs posted through the API)."""
    with scratch_file(store) as path:
        with open(path, "wb") as handle:
            shutil.copyfileobj(stream, handle)
        store.put(key, path)
