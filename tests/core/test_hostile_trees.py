"""Hostile trees for ``filmless import``: links out of the folder, folders nested deeper than any
disc, empty files and a 4 GB declared length. Each is refused with a reason; nothing outside the
store is written, and the good files beside them are imported."""
from __future__ import annotations

import struct

from test_import_cli import blob_keys, run_import, site_file, stored_uids, study, uids  # noqa: F401 (fixture)

DEPTH = 100  # deeper than the importer goes (64)


def test_links_deep_folders_empty_files_and_huge_lengths_are_refused(site_file, tmp_path):
    tree = tmp_path / "cd"
    good = study(tree / "exam", "TREE-GOOD")
    outside = study(tmp_path / "elsewhere", "TREE-OUTSIDE", instances=2)
    (tree / "linked.dcm").symlink_to(outside[0])
    (tree / "linked-folder").symlink_to(outside[1].parent, target_is_directory=True)
    (tree / "empty.dcm").write_bytes(b"")
    huge = good[0].read_bytes()
    # after the file meta group (its length is the UL at byte 140), an element declaring
    # 0xFFFFFFF0 bytes (about 4 GB): (0008,0001), explicit VR "UN"
    at = 144 + struct.unpack_from("<I", huge, 140)[0]
    (tree / "huge-length.dcm").write_bytes(huge[:at] + b"\x08\x00\x01\x00UN\x00\x00" +
                                           struct.pack("<I", 0xFFFFFFF0) + huge[at:])
    deep = tree.joinpath(*["d"] * DEPTH)
    deep.mkdir(parents=True)
    (deep / "deep.dcm").write_bytes(outside[1].read_bytes())

    result = run_import(site_file, tree)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    refused = dict(line.removeprefix("refused ").rsplit(": ", 1) for line in lines[1:])
    assert lines[0] == f"accepted {len(good)}, already held 0, refused 5", result.stdout
    assert refused[str(tree / "linked.dcm")] == "The file is a link; it was skipped."
    assert refused[str(tree / "linked-folder")] == "The file is a link; it was skipped."
    assert refused[str(tree / "empty.dcm")].startswith("The file is empty")
    assert str(tree / "huge-length.dcm") in refused
    assert any(name.startswith(str(tree / "d")) and reason.startswith("The folders are nested too deeply")
               for name, reason in refused.items())
    assert stored_uids(site_file) == uids(good)  # nothing reached through a link or the deep folder
    assert len(blob_keys(site_file)) == len(good)
    assert list((site_file.parent / "blobs" / "scratch").iterdir()) == []
