"""Synthetic DICOM studies, written with pydicom: the demo site's exams, the tests'
files and the benchmarks' load. Pixel content is a smooth pattern with a marker
per frame, so a viewer shows something recognisable and frames differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (CTImageStorage, ComputedRadiographyImageStorage, EncapsulatedPDFStorage,
                         ExplicitVRLittleEndian, JPEGBaseline8Bit, MRImageStorage, PYDICOM_IMPLEMENTATION_UID,
                         SecondaryCaptureImageStorage, generate_uid)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ULTRASOUND_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage,
               "DX": ComputedRadiographyImageStorage, "US": ULTRASOUND_MULTIFRAME, "OT": SecondaryCaptureImageStorage}
WINDOWS = {"CT": (40, 400), "MR": (600, 1200), "CR": (2048, 4096), "DX": (2048, 4096)}


@dataclass
class StudySpec:
    patient_id: str = "SYN-0001"
    family_name: str = "Synthetic"
    given_name: str = "Pat"
    birth_date: date = date(1980, 1, 2)
    sex: str = "O"
    issuer: str = ""
    accession_number: str = ""
    study_date: date = date(2026, 1, 15)
    description: str = "CT CHEST"
    modality: str = "CT"
    body_part: str = "CHEST"
    institution: str = "Filmless Demo Imaging"
    series: int = 1
    instances: int = 4
    rows: int = 64
    columns: int = 64
    frames: int = 1
    photometric: str = "MONOCHROME2"  # or MONOCHROME1, RGB
    jpeg: bool = False  # baseline JPEG (8-bit) instead of raw pixels
    study_uid: str = field(default_factory=generate_uid)


def _base(spec: StudySpec, sop_class: str, sop_uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName = f"{spec.family_name}^{spec.given_name}"
    ds.PatientID = spec.patient_id
    if spec.issuer:
        ds.IssuerOfPatientID = spec.issuer
    ds.PatientBirthDate = spec.birth_date.strftime("%Y%m%d")
    ds.PatientSex = spec.sex
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = ds.ContentDate = spec.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = "101500"
    ds.AccessionNumber = spec.accession_number
    ds.StudyDescription = spec.description
    ds.InstitutionName = spec.institution
    ds.ReferringPhysicianName = "Referrer^Robin"
    ds.StudyID = "1"
    return ds


def _pixels(spec: StudySpec, index: int) -> np.ndarray:
    y, x = np.mgrid[0:spec.rows, 0:spec.columns]
    frames = []
    for frame in range(spec.frames):
        radius = np.hypot(x - spec.columns / 2, y - spec.rows / 2)
        base = (np.cos(radius / 6 + index + frame) + 1) * 1000
        base[: 4 + (index + frame) % max(spec.rows - 4, 1), :3] = 3000  # a marker that moves with the slice
        frames.append(base)
    data = np.stack(frames) if spec.frames > 1 else frames[0]
    if spec.photometric == "RGB" or spec.jpeg:
        scaled = (data / data.max() * 255).astype(np.uint8)
        return np.stack([scaled, np.flipud(scaled) if scaled.ndim == 2 else scaled, scaled], axis=-1) \
            if spec.photometric == "RGB" else scaled
    return data.astype(np.uint16)


def image(spec: StudySpec, series_index: int, index: int, series_uid: str) -> Dataset:
    sop_class = SOP_CLASSES.get(spec.modality, SecondaryCaptureImageStorage)
    ds = _base(spec, sop_class, generate_uid())
    ds.Modality, ds.BodyPartExamined = spec.modality, spec.body_part
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_index + 1
    ds.SeriesDescription = f"{spec.description} series {series_index + 1}"
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, float(index) * 2.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness, ds.PixelSpacing = 2.5, [0.7, 0.7]
    pixels = _pixels(spec, index)
    ds.Rows, ds.Columns = spec.rows, spec.columns
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    if spec.photometric == "RGB":
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, spec.photometric
        eight = spec.jpeg
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8, 8, 7) if eight else (16, 12, 11)
        ds.PixelRepresentation = 0
        if not eight and spec.modality in WINDOWS:
            ds.WindowCenter, ds.WindowWidth = WINDOWS[spec.modality]
        if spec.modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    if spec.jpeg:
        from io import BytesIO

        from PIL import Image

        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        frames = pixels if spec.frames > 1 else [pixels]
        encoded = []
        for frame in frames:
            buffer = BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
            encoded.append(buffer.getvalue())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.tobytes()
    return ds


def study(spec: StudySpec) -> list[Dataset]:
    """Every image dataset of a study (``series`` × ``instances``)."""
    datasets = []
    for series_index in range(spec.series):
        series_uid = generate_uid()
        datasets.extend(image(spec, series_index, index, series_uid) for index in range(spec.instances))
    return datasets


def text_report(spec: StudySpec, text: str, *, verified: bool = True, signed: str = "20260115120000") -> Dataset:
    """A Basic Text SR carrying a report, verified (signed) by default."""
    ds = _base(spec, BASIC_TEXT_SR, generate_uid())
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SR", generate_uid(), 99
    ds.SeriesDescription = "Report"
    ds.InstanceNumber = 1
    ds.ValueType, ds.CompletionFlag = "CONTAINER", "COMPLETE"
    ds.VerificationFlag = "VERIFIED" if verified else "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [title]
    if verified:
        observer = Dataset()
        observer.VerifyingObserverName, observer.VerificationDateTime = "Reader^Riley", signed
        observer.VerifyingObserverIdentificationCodeSequence = []
        observer.VerifyingOrganization = spec.institution
        ds.VerifyingObserverSequence = [observer]
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    findings = Dataset()
    findings.CodeValue, findings.CodingSchemeDesignator, findings.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = [findings]
    ds.ContentSequence = [item]
    return ds


def pdf_report(spec: StudySpec, pdf: bytes, signed: str = "20260115120000") -> Dataset:
    ds = _base(spec, EncapsulatedPDFStorage, generate_uid())
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "DOC", generate_uid(), 98, 1
    ds.DocumentTitle, ds.MIMETypeOfEncapsulatedDocument = "Report", "application/pdf"
    ds.ContentDate, ds.ContentTime = signed[:8], signed[8:]
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return ds


def write(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text``, as a reporting system would send."""
    from core.studies.report_pdf import document

    return document(title="Report", head=[], text=text, running="", footer="")
