"""The blob store: a folder or an S3 bucket; scratch files and claims that only the
dead can lose; blobs that live or die with their transaction."""
from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from support import ROOT, free_port, ingest_file, make_site

from core.app import build_runtime
from core.studies import blobs, service, synthetic
from core.studies.models import Instance

KEY = "dicom/ab/cd/abcdef0123456789"


def test_put_moves_a_scratch_file_in_whole(tmp_path):
    store = blobs.FilesystemBlobs(tmp_path / "blobs")
    with blobs.scratch_file(store, ".dcm") as scratch:
        scratch.write_bytes(b"payload")
        store.put(KEY, scratch)
        assert not scratch.exists()
    assert store.exists(KEY) and store.open(KEY).read() == b"payload"
    assert store.local_path(KEY) == tmp_path / "blobs" / KEY
    assert list(store.keys()) == [KEY]
    assert list(store.scratch.iterdir()) == []
    store.delete(KEY)
    assert not store.exists(KEY) and list(store.keys()) == []


def test_prepare_readies_the_folders_ahead_and_a_prepared_put_only_moves(tmp_path):
    store = blobs.FilesystemBlobs(tmp_path / "blobs")
    with blobs.scratch_file(store, ".dcm") as first, blobs.scratch_file(store, ".dcm") as second:
        first.write_bytes(b"one")
        second.write_bytes(b"two")
        other = "dicom/ef/01/ef0123456789"
        store.prepare([(KEY, first), (other, second)])
        assert (tmp_path / "blobs" / KEY).parent.is_dir() and (tmp_path / "blobs" / other).parent.is_dir()
        assert first.exists() and not store.exists(KEY)  # nothing is moved before put
        store.put_many([(KEY, first)], prepared=True)
        assert store.open(KEY).read() == b"one" and not first.exists()
    assert list(store.keys()) == [KEY]  # the one never put left an empty folder, no blob


def test_the_sweep_removes_a_dead_processes_scratch_files_but_never_a_living_ones(tmp_path):
    store = blobs.FilesystemBlobs(tmp_path / "blobs")
    store.scratch.mkdir(parents=True)
    dead = store.scratch / "left-by-a-killed-process.part"
    dead.write_bytes(b"half a file")
    with blobs.scratch_file(store) as living:
        living.write_bytes(b"arriving")
        assert blobs.sweep_scratch(store) == 1
        assert living.read_bytes() == b"arriving" and not dead.exists()
    assert list(store.scratch.iterdir()) == []


def test_a_claim_is_abandoned_only_when_its_holder_is_gone(tmp_path):
    store = blobs.FilesystemBlobs(tmp_path / "blobs")
    held = blobs.claim(store, KEY)
    assert list(blobs.abandoned_claims(store)) == []
    held.release()
    assert list(store.scratch.iterdir()) == []
    # a holder that was killed: the marker stays, its lock is gone with the process
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; from core.studies import blobs; "
        f"blobs.claim(blobs.FilesystemBlobs(Path(sys.argv[1])), {KEY!r}); os.kill(os.getpid(), signal.SIGKILL)"),
        str(tmp_path / "blobs")], cwd=ROOT, timeout=60)
    assert killed.returncode < 0
    [abandoned] = list(blobs.abandoned_claims(store))
    assert abandoned.key == KEY
    abandoned.release()
    assert list(store.scratch.iterdir()) == []


def test_a_blob_put_in_a_transaction_lives_or_dies_with_it(runtime, session, tmp_path):
    store = runtime.blobs

    def put(key: str) -> None:
        with blobs.scratch_file(store) as scratch:
            scratch.write_bytes(key.encode())
            service.put_in_transaction(session, store, key, scratch)

    put("report/00/00/rolled-back")
    assert store.exists("report/00/00/rolled-back")
    session.rollback()
    assert not store.exists("report/00/00/rolled-back")
    put("report/00/00/committed")
    session.commit()
    session.rollback()
    assert store.exists("report/00/00/committed")
    assert list(store.scratch.iterdir()) == []  # claims settled either way


def test_remove_orphans_deletes_only_unreferenced_blobs_of_dead_claims(runtime, session, tmp_path):
    [path] = synthetic.write(synthetic.study(synthetic.StudySpec(instances=1, patient_id="ORPH-1")), tmp_path)
    stored = ingest_file(session, runtime, path)
    key = session.scalar(select(Instance.blob_key).where(Instance.sop_uid == stored.sop_uid))
    store = runtime.blobs
    for orphan in ("dicom/00/00/orphan", key):  # markers as a killed process leaves them
        (store.scratch / orphan.replace("/", "__")).with_suffix(".claim").write_bytes(b"")
        if orphan != key:
            with blobs.scratch_file(store) as scratch:
                scratch.write_bytes(b"moved in, never committed")
                store.put(orphan, scratch)
    living = blobs.claim(store, "dicom/00/00/in-flight")
    with blobs.scratch_file(store) as scratch:
        scratch.write_bytes(b"another process is about to commit this")
        store.put("dicom/00/00/in-flight", scratch)
    assert service.remove_orphans(session, runtime) == 1
    assert not store.exists("dicom/00/00/orphan")
    assert store.exists(key) and store.exists("dicom/00/00/in-flight")
    assert [p.name for p in store.scratch.iterdir()] == [living.path.name]
    living.release()


# -- S3 ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free local port: the stand-in for a cloud bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_runtime(tmp_path, database_url, s3_endpoint):
    import boto3

    storage = {"kind": "s3", "bucket": "filmless-test", "prefix": "site-a/", "endpoint_url": s3_endpoint,
               "region": "us-east-1", "access_key": "testing", "secret_key": "testing",
               "scratch": str(tmp_path / "scratch")}
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="filmless-test")
    runtime = build_runtime(make_site(tmp_path, database=database_url, storage=storage))
    connection = runtime.engine.connect()
    outer = connection.begin()
    runtime.sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint",
                                    expire_on_commit=False, info={"plugins": runtime.pm, "runtime": runtime})
    yield runtime
    outer.rollback()
    connection.close()
    runtime.close()


def test_an_s3_site_ingests_into_its_bucket_reads_back_and_deletes(s3_runtime, tmp_path):
    store = s3_runtime.blobs
    assert isinstance(store, blobs.S3Blobs)
    [path] = synthetic.write(synthetic.study(synthetic.StudySpec(instances=1, patient_id="S3-1")), tmp_path / "in")
    with s3_runtime.sessions() as session:
        result = ingest_file(session, s3_runtime, path)
        assert result.outcome == "stored"
        key = session.scalar(select(Instance.blob_key).where(Instance.sop_uid == result.sop_uid))
        assert ingest_file(session, s3_runtime, path).outcome == "duplicate"
    listed = store.client.list_objects_v2(Bucket="filmless-test")["Contents"]
    assert [item["Key"] for item in listed] == [f"site-a/{key}"]
    assert list(store.keys()) == [key]
    assert store.local_path(key) is None
    with store.open(key) as handle:
        assert handle.read() == path.read_bytes()
    assert list(store.scratch.iterdir()) == []
    store.delete(key)
    assert not store.exists(key) and list(store.keys()) == []


def test_an_s3_blob_whose_transaction_rolls_back_is_deleted_from_the_bucket(s3_runtime):
    store = s3_runtime.blobs
    with s3_runtime.sessions() as session:
        with blobs.scratch_file(store) as scratch:
            scratch.write_bytes(b"%PDF-1.4 draft")
            service.put_in_transaction(session, store, "report/11/22/draft", scratch)
        assert store.exists("report/11/22/draft")
        session.rollback()
    assert not store.exists("report/11/22/draft")
