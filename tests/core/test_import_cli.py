"""``filmless import`` and ``filmless link-patients`` as real processes: files, folders,
zip files (with traversal names and bombs) and DICOMDIR trees; the summary and exit codes."""
from __future__ import annotations

import io
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet
from sqlalchemy import text
from support import ROOT, filmless, site_data, write_site

from core import db, plugins
from core.app import build_runtime
from core.site import load_site
from core.studies import blobs, importer, synthetic

pytestmark = pytest.mark.slow


@pytest.fixture
def site_file(tmp_path) -> Path:
    """A site of its own (no plugins, a 1 MB limit), migrated."""
    path = write_site(tmp_path / "site", site_data(tmp_path / "site", plugins={}, studies={"max_file_mb": 1}))
    engine = db.make_engine(f"sqlite:///{tmp_path / 'site' / 'portal.db'}")
    db.upgrade(engine, plugins.build_manager({}))
    engine.dispose()
    return path


def query(site_file: Path, sql: str) -> list:
    engine = db.make_engine(f"sqlite:///{site_file.parent / 'portal.db'}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)))
    finally:
        engine.dispose()


def stored_uids(site_file: Path) -> set[str]:
    return {row[0] for row in query(site_file, "SELECT sop_uid FROM instance")}


def blob_keys(site_file: Path) -> set[str]:
    return set(blobs.FilesystemBlobs(site_file.parent / "blobs").keys())


def run_import(site_file: Path, *paths) -> subprocess.CompletedProcess:
    return filmless("--site", str(site_file), "import", *map(str, paths))


def uids(paths) -> set[str]:
    return {pydicom.dcmread(p).SOPInstanceUID for p in paths}


def study(folder: Path, patient_id: str, instances: int = 2, **spec) -> list[Path]:
    return synthetic.write(synthetic.study(synthetic.StudySpec(patient_id=patient_id, instances=instances, **spec)),
                           folder)


def test_files_and_folders_are_imported_and_a_second_run_finds_them_held(site_file, tmp_path):
    loose = study(tmp_path / "loose", "CLI-1")
    nested = study(tmp_path / "tree" / "a" / "b", "CLI-2", instances=3)
    (tmp_path / "tree" / "notes.txt").write_text("not an image")
    first = run_import(site_file, *loose, tmp_path / "tree")
    assert first.returncode == 1, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == "accepted 5, already held 0, refused 1"
    assert lines[1:] == [f"refused {tmp_path / 'tree' / 'notes.txt'}: This is not a DICOM file "
                         "(no DICM marker after the 128-byte preamble)."]
    assert first.stderr.strip().endswith("6 of 6 files read.")
    assert stored_uids(site_file) == uids(loose + nested)
    assert blob_keys(site_file) == {row[0] for row in query(site_file, "SELECT blob_key FROM instance")}

    again = run_import(site_file, *loose, tmp_path / "tree" / "a")
    assert (again.returncode, again.stdout) == (0, "accepted 0, already held 5, refused 0\n")


def test_a_missing_path_is_refused_and_a_bad_site_stops_with_exit_2(site_file, tmp_path):
    missing = run_import(site_file, tmp_path / "no-such-folder")
    assert missing.returncode == 1
    assert missing.stdout.splitlines() == ["accepted 0, already held 0, refused 1",
                                           f"refused {tmp_path / 'no-such-folder'}: There is no such file or folder."]
    bad = write_site(tmp_path / "bad", {**site_data(tmp_path / "bad", plugins={}), "studies": {"max_file": 3}})
    broken = filmless("--site", str(bad), "import", str(tmp_path))
    assert broken.returncode == 2
    assert "studies.max_file: unknown key" in broken.stderr and broken.stdout == ""


def test_a_terminal_gets_a_progress_bar(site_file, tmp_path):
    paths = study(tmp_path / "in", "CLI-TTY", instances=3)
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "import", *map(str, paths)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    shown = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        assert ready, "the import wrote nothing for a minute"
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    assert process.stdout.read() == "accepted 3, already held 0, refused 0\n"
    screen = shown.decode()
    assert "\r[##########" in screen and "] 1/3" in screen and "] 3/3" in screen
    assert "3 of 3 files read." in screen


# -- zip files ---------------------------------------------------------------------------------

def _set_declared_size(archive: Path, member: str, size: int) -> None:
    """Make the zip lie about how large ``member`` unpacks (local and central headers)."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    local = data.index(b"PK\x03\x04")
    while data[local + 30: local + 30 + len(name)] != name:
        local = data.index(b"PK\x03\x04", local + 4)
    data[local + 22: local + 26] = struct.pack("<I", size)
    central = data.index(b"PK\x01\x02")
    while data[central + 46: central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 4)
    data[central + 24: central + 28] = struct.pack("<I", size)
    archive.write_bytes(bytes(data))


def test_zip_files_are_read_as_streams_with_traversal_names_and_bombs_refused(site_file, tmp_path):
    good = study(tmp_path / "in", "ZIP-1")
    smuggled = study(tmp_path / "smuggled", "ZIP-EVIL", instances=2)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in good:
            out.write(path, f"exam/{path.name}")
        out.writestr("../../evil.dcm", smuggled[0].read_bytes())  # names as a tampered archive has them
        out.writestr("/abs/evil.dcm", smuggled[1].read_bytes())
        out.writestr("too-big.bin", bytes(2 * 2**20))
        out.writestr("liar.bin", bytes(3 * 2**20))
    _set_declared_size(archive, "liar.bin", 1000)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for index in range(30):
            out.writestr(f"part{index:02}.bin", bytes(900 * 1024))
    assert bomb.stat().st_size < 100 * 1024

    result = run_import(site_file, archive, bomb)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "accepted 2, already held 0, refused 34"
    refused = dict(line.removeprefix("refused ").rsplit(": ", 1) for line in lines[1:])
    assert refused[f"{archive}:../../evil.dcm"] == "The archive entry has an unsafe name; it was skipped."
    assert refused[f"{archive}:/abs/evil.dcm"] == "The archive entry has an unsafe name; it was skipped."
    assert refused[f"{archive}:too-big.bin"] == "The file is larger than this site accepts (1 MB)."
    assert refused[f"{archive}:liar.bin"] == "The archive entry is damaged or cannot be unpacked."
    from_bomb = [reason for name, reason in refused.items() if name.startswith(str(bomb))]
    assert len(from_bomb) == 30
    stopped = [r for r in from_bomb if r.startswith("The archive unpacks to far more than its size;")]
    assert 20 <= len(stopped) < 30  # a few parts were read (and were not DICOM), then reading stopped
    assert stored_uids(site_file) == uids(good)
    assert len(blob_keys(site_file)) == 2
    assert not (tmp_path.parent / "evil.dcm").exists() and not Path("/abs/evil.dcm").exists()
    assert list((site_file.parent / "blobs" / "scratch").iterdir()) == []


# -- DICOMDIR trees ----------------------------------------------------------------------------

def write_cd(folder: Path, datasets) -> None:
    files = FileSet()
    for ds in datasets:
        files.add(ds)
    files.write(folder)


def referenced_files(dicomdir: Path) -> list[Path]:
    ds = pydicom.dcmread(dicomdir)
    return [dicomdir.parent.joinpath(*record.ReferencedFileID) for record in ds.DirectoryRecordSequence
            if "ReferencedFileID" in record]


def test_a_dicomdir_tree_imports_the_files_it_lists(site_file, tmp_path):
    datasets = synthetic.study(synthetic.StudySpec(patient_id="CD-1", instances=3))
    write_cd(tmp_path / "cd", datasets)
    (tmp_path / "cd" / "AUTORUN.INF").write_text("[autorun]\n")  # on the disc, not in the DICOMDIR
    listed = referenced_files(tmp_path / "cd" / "DICOMDIR")
    listed[0].rename(listed[0].with_name(listed[0].name.lower()))  # discs copied on other systems change case
    result = run_import(site_file, tmp_path / "cd")
    assert (result.returncode, result.stdout) == (0, "accepted 3, already held 0, refused 0\n")
    assert stored_uids(site_file) == {ds.SOPInstanceUID for ds in datasets}

    # the same disc as a zip file, and its DICOMDIR named directly
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted((tmp_path / "cd").rglob("*")):
            if path.is_file():
                out.write(path, f"DISC/{path.relative_to(tmp_path / 'cd').as_posix()}")
    again = run_import(site_file, archive, tmp_path / "cd" / "DICOMDIR")
    assert (again.returncode, again.stdout) == (0, "accepted 0, already held 6, refused 0\n")


def test_a_dicomdir_cannot_reach_outside_its_folder(site_file, tmp_path):
    inside = synthetic.study(synthetic.StudySpec(patient_id="CD-2", instances=3))
    write_cd(tmp_path / "cd", inside)
    outside = study(tmp_path / "outside", "SECRET-1", instances=1)[0]
    shutil.copy(outside, tmp_path / "outside.dcm")
    (tmp_path / "cd" / "LINK").symlink_to(tmp_path / "outside", target_is_directory=True)
    dicomdir = pydicom.dcmread(tmp_path / "cd" / "DICOMDIR")
    images = [r for r in dicomdir.DirectoryRecordSequence if "ReferencedFileID" in r]
    images[0].ReferencedFileID = ["..", "outside.dcm"]
    images[1].ReferencedFileID = ["LINK", outside.name]
    dicomdir.save_as(tmp_path / "cd" / "DICOMDIR")

    result = run_import(site_file, tmp_path / "cd" / "DICOMDIR")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "accepted 1, already held 0, refused 2"
    outside_reason = "The DICOMDIR points outside its folder; the entry was skipped."
    assert sorted(lines[1:]) == sorted([f"refused {tmp_path / 'cd'}/../outside.dcm: {outside_reason}",
                                        f"refused {tmp_path / 'cd'}/LINK/{outside.name}: {outside_reason}"])
    assert {row[0] for row in query(site_file, "SELECT patient_id FROM patient")} == {"CD-2"}


# -- link-patients ----------------------------------------------------------------------------

def test_link_patients_joins_two_practices_records_and_is_audited(site_file, tmp_path):
    runtime = build_runtime(load_site(site_file))
    try:  # the records arrive in-process; the command under test is link-patients
        paths = study(tmp_path / "north", "N-100", instances=1, issuer="NORTH") + \
            study(tmp_path / "south", "S-200", instances=1, issuer="SOUTH")
        assert importer.run(runtime, paths, actor="test", stream=io.StringIO()).accepted == 2
    finally:
        runtime.close()
    linked = filmless("--site", str(site_file), "link-patients", "NORTH:N-100", "SOUTH:S-200")
    assert (linked.returncode, linked.stdout) == (0, "linked SOUTH:S-200 to NORTH:N-100\n"), linked.stderr
    rows = dict(query(site_file, "SELECT patient_id, coalesce(person_ref, id) FROM patient"))
    assert rows["N-100"] == rows["S-200"]
    [(detail,)] = query(site_file, "SELECT detail FROM audit_event WHERE action = 'patient.linked'")
    assert '"SOUTH:S-200"' in detail and '"NORTH:N-100"' in detail
    twice = filmless("--site", str(site_file), "link-patients", "NORTH:N-100", "SOUTH:S-200")
    assert twice.stdout == "SOUTH:S-200 and NORTH:N-100 were already linked\n"
    unknown = filmless("--site", str(site_file), "link-patients", "NORTH:N-100", "EAST:E-1")
    assert unknown.returncode == 2 and "no patient record 'EAST:E-1'" in unknown.stderr
    assert len(query(site_file, "SELECT seq FROM audit_event WHERE action = 'patient.linked'")) == 1
