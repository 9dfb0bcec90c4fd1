"""A real ``filmless serve`` process spoken to by the dicomweb-client package, the way a
PACS or a research script would: store, search, retrieve, metadata, frames, rendered."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from support import ROOT, demo_site_file, filmless, free_port, wait_for

from core.studies import synthetic

pytestmark = pytest.mark.slow
TOKEN = "pacs-token-for-the-client-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicomweb")
    port = free_port()
    demo = yaml.safe_load((ROOT / "sites" / "demo.yaml").read_text(encoding="utf-8"))["site"]
    site_file = demo_site_file(folder, studies={"pacs_token": TOKEN},
                               site={**demo, "base_url": f"http://127.0.0.1:{port}"})
    migrated = filmless("--site", str(site_file), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "serve"], cwd=ROOT,
                               env={**os.environ, "PORT": str(port)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", process)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


@pytest.fixture
def dicomweb(server):
    return DICOMwebClient(url=f"{server}/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})


def test_store_search_and_retrieve_with_dicomweb_client(dicomweb):
    spec = synthetic.StudySpec(patient_id="DWC-1", family_name="Client", instances=2, frames=2)
    datasets = synthetic.study(spec)
    answer = dicomweb.store_instances(datasets)
    assert {str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence} == \
        {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in answer

    [study] = dicomweb.search_for_studies(search_filters={"PatientID": "DWC-1"})
    assert study["0020000D"]["Value"] == [spec.study_uid] and study["00201208"]["Value"] == [2]
    assert dicomweb.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    [series] = dicomweb.search_for_series(spec.study_uid)
    series_uid = series["0020000E"]["Value"][0]
    assert series_uid == str(datasets[0].SeriesInstanceUID)
    instances = dicomweb.search_for_instances(spec.study_uid, series_uid, fields=["ImagePositionPatient"])
    assert len(instances) == 2 and all("00200032" in found for found in instances)

    retrieved = dicomweb.retrieve_study(spec.study_uid)
    assert sorted(str(ds.SOPInstanceUID) for ds in retrieved) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    first = datasets[0]
    sop_uid = str(first.SOPInstanceUID)
    instance = dicomweb.retrieve_instance(spec.study_uid, series_uid, sop_uid)
    assert np.array_equal(instance.pixel_array, first.pixel_array)
    metadata = dicomweb.retrieve_instance_metadata(spec.study_uid, series_uid, sop_uid)
    assert metadata["00080018"]["Value"] == [sop_uid]
    assert len(dicomweb.retrieve_study_metadata(spec.study_uid)) == 2

    frames = dicomweb.retrieve_instance_frames(spec.study_uid, series_uid, sop_uid, frame_numbers=[2, 1])
    size = 64 * 64 * 2
    assert frames == [first.PixelData[size:], first.PixelData[:size]]
    pixel_bulk = dicomweb.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert b"".join(pixel_bulk) == first.PixelData

    png = dicomweb.retrieve_instance_rendered(spec.study_uid, series_uid, sop_uid, media_types=("image/png",),
                                              params={"viewport": "32,32"})
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    jpeg = dicomweb.retrieve_instance_frames_rendered(spec.study_uid, series_uid, sop_uid, frame_numbers=[2])
    assert jpeg.startswith(b"\xff\xd8")


def test_compressed_frames_reach_the_client_as_stored(dicomweb):
    spec = synthetic.StudySpec(patient_id="DWC-2", jpeg=True, instances=1)
    [dataset] = synthetic.study(spec)
    dicomweb.store_instances([dataset])
    [frame] = dicomweb.retrieve_instance_frames(spec.study_uid, str(dataset.SeriesInstanceUID),
                                                str(dataset.SOPInstanceUID), frame_numbers=[1],
                                                media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert frame.startswith(b"\xff\xd8")
    assert np.abs(np.asarray(Image.open(io.BytesIO(frame)), int) - dataset.pixel_array.astype(int)).max() <= 2
