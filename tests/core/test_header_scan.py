"""The one-pass header reading gives exactly what pydicom's reading gives, or steps aside.

``header_scan.scan`` is held to ``dicom.stored_values(dicom.read_header(...))`` (the DICOM JSON
model included) on pydicom's own test files, on the files this project writes, on text in
each character set it reads, on nested sequences of both lengths, and on every way of cutting
a file short: wherever it answers, the answer is the same, and where pydicom refuses a file it
does not answer at all."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from core.studies import dicom, header_scan, synthetic

LIMIT = 2**31


def through_pydicom(path: Path):
    try:
        return dicom.stored_values(dicom.read_header(path, max_bytes=LIMIT))
    except dicom.Refused as refusal:
        return ("refused", refusal.kind)


def scanned(path: Path):
    return header_scan.scan(path, path.stat().st_size)


def our_files(folder: Path) -> list[Path]:
    spec = synthetic.StudySpec
    datasets = (synthetic.study(spec(series=2, instances=2)) + synthetic.study(spec(photometric="RGB", instances=1))
                + synthetic.study(spec(photometric="MONOCHROME1", instances=1))
                + synthetic.study(spec(jpeg=True, instances=1)) + synthetic.study(spec(frames=3, instances=1)))
    datasets += [synthetic.text_report(spec(), "FINDINGS: none."),
                 synthetic.pdf_report(spec(), synthetic.minimal_pdf("Report"))]
    return synthetic.write(datasets, folder)


def test_it_reads_pydicoms_test_files_as_pydicom_does(tmp_path):
    files = [Path(name) for name in get_testdata_files() if Path(name).is_file()]
    read = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's test files are odd on purpose, and it says so
        for path in files:
            found = scanned(path)
            if found is not None:
                read += 1
                assert found == through_pydicom(path), path.name
    assert read >= 100, f"only {read} of {len(files)} read in one pass"


def test_it_reads_every_kind_of_file_this_project_writes(tmp_path):
    for path in our_files(tmp_path):
        found = scanned(path)
        assert found is not None, path.name
        assert found == through_pydicom(path)
        assert found["header"]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Synthetic^Pat"}]}


def rewrite(path: Path, change) -> Path:
    dataset = pydicom.dcmread(path)
    change(dataset)
    out = path.with_name(f"changed-{path.name}")
    dataset.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("character_set, name", [
    ("ISO_IR 100", "Muñoz^José"), ("ISO_IR 192", "Muñoz^José"), ("ISO_IR 192", "Nguyễn^Thị"),
    ("", "Plain^Name"), ("ISO_IR 6", "Plain^Name")])
def test_names_in_the_character_sets_it_reads_come_out_as_pydicoms(tmp_path, character_set, name):
    def change(dataset):
        dataset.SpecificCharacterSet = character_set
        dataset.PatientName = name
        dataset.StudyDescription = name.replace("^", " ")

    path = rewrite(our_files(tmp_path)[0], change)
    found = scanned(path)
    assert found is not None
    assert found == through_pydicom(path)
    assert (found["family_name"], found["given_name"]) == tuple(name.split("^"))


def test_text_it_cannot_be_sure_of_is_left_to_pydicom(tmp_path):
    def change(dataset):
        dataset.pop(0x00080005, None)  # Latin-1 bytes with no character set named
        dataset.PatientName = "Muñoz^José"

    path = rewrite(our_files(tmp_path)[0], change)
    assert scanned(path) is None
    assert header_scan.read(path, max_bytes=LIMIT) == through_pydicom(path)


@pytest.mark.parametrize("undefined", [False, True])
def test_nested_sequences_of_either_length_come_out_as_pydicoms(tmp_path, undefined):
    def change(dataset):
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D3000", "SRT", "Chest"
        outer = Dataset()
        outer.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
        outer.AnatomicRegionSequence = Sequence([inner])
        dataset.ReferencedImageSequence = Sequence([outer, Dataset()])
        dataset.WindowCenter, dataset.WindowWidth = ["40", "-600"], ["400", "1500.5"]
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.add_new(0x00091010, "OB", b"\x01\x02" * 600)  # private, long enough for bulk data
        dataset.add_new(0x00091011, "LO", "PRIVATE NOTE")
        for element in (dataset["ReferencedImageSequence"], outer["AnatomicRegionSequence"]):
            element.is_undefined_length = undefined
        for item in (outer, inner):
            item.is_undefined_length_sequence_item = undefined

    path = rewrite(our_files(tmp_path)[0], change)
    found = scanned(path)
    assert found is not None
    assert found == through_pydicom(path)
    assert found["header"]["00091010"] == {"vr": "OB", "BulkDataURI": "bulk:00091010"}
    assert len(found["header"]["00081140"]["Value"]) == 2


def test_a_file_cut_short_anywhere_is_left_to_pydicom_which_refuses_it(tmp_path):
    whole = our_files(tmp_path)[0].read_bytes()
    header_end = whole.index(b"\xe0\x7f\x10\x00")  # where the pixel data begins
    cuts = sorted(set(range(1, header_end + 13, 7)) | {len(whole) - 1, len(whole) - 1000})
    cut_file = tmp_path / "cut.dcm"
    for cut in cuts:
        cut_file.write_bytes(whole[:cut])
        expected = through_pydicom(cut_file)
        found = scanned(cut_file)
        assert found is None or found == expected, cut
        if isinstance(expected, tuple):
            assert found is None, cut


def as_implicit(dataset):
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian


def test_an_implicit_vr_file_is_read_with_pydicoms_dictionary(tmp_path):
    path = rewrite(our_files(tmp_path)[0], as_implicit)
    found = scanned(path)
    assert found is not None
    assert found == through_pydicom(path)
    assert found["transfer_syntax"] == pydicom.uid.ImplicitVRLittleEndian
    assert found["header"]["00280010"] == {"vr": "US", "Value": [64]}


@pytest.mark.parametrize("add", [
    lambda dataset: dataset.add_new(0x00091010, "LO", "VENDOR VALUE"),  # private: VR from the creator's dictionary
    lambda dataset: dataset.add_new(0x00280106, "US", 0),  # "US or SS" in the dictionary
])
def test_an_implicit_vr_element_whose_vr_pydicom_must_work_out_is_left_to_it(tmp_path, add):
    def change(dataset):
        as_implicit(dataset)
        dataset.add_new(0x00090010, "LO", "VENDOR")
        add(dataset)

    path = rewrite(our_files(tmp_path)[0], change)
    assert scanned(path) is None
    assert header_scan.read(path, max_bytes=LIMIT) == through_pydicom(path)


@pytest.mark.parametrize("implicit", [False, True])
def test_damaged_headers_read_in_one_pass_only_as_pydicom_reads_them(tmp_path, implicit):
    """Random bytes changed in a header (a fixed file and a seeded choice, so a failure repeats):
    the one-pass reading answers only with what pydicom makes of the same bytes."""
    source = tmp_path / "CT_small.dcm"
    source.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())

    def public_implicit(dataset):
        dataset.remove_private_tags()
        for element in list(dataset):
            if element.tag != 0x7FE00010 and " or " in dictionary_VR(element.tag):  # left to pydicom (above)
                del dataset[element.tag]
        as_implicit(dataset)

    whole = bytearray((rewrite(source, public_implicit) if implicit else source).read_bytes())
    header_end = whole.index(b"\xe0\x7f\x10\x00")
    chooser = random.Random(5 + implicit)
    damaged = tmp_path / "damaged.dcm"
    answered = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _round in range(400):
            data = bytearray(whole)
            for _change in range(chooser.randint(1, 3)):
                data[chooser.randrange(132, header_end)] = chooser.randrange(256)
            damaged.write_bytes(bytes(data))
            found = scanned(damaged)
            if found is not None:
                answered += 1
                assert found == through_pydicom(damaged), _round
    assert answered > 50  # most changes land in values, which the one pass reads
