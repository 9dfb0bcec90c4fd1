"""What FastAPI cannot see of the DICOMweb and JSON APIs, added to the OpenAPI schema it builds.

QIDO-RS matches on any attribute, rendering takes its options from the query string, and the
PACS's APIs read their own bodies (JSON, a PDF part, or multipart/related DICOM), so the routes
declare none of these as function parameters. The schema (``app.openapi()``) names them, as
PS3.18 and the reports API define them, for clients and for the schema-driven tests
(``tests/security/test_schema_fuzz.py``).
"""
from __future__ import annotations

import re

from fastapi import FastAPI

from core.studies.api import ReportIn


def _query(name: str, description: str, **schema) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


# PS3.18 §8.3.4: matching attributes by keyword, and the paging and return-attribute options
QIDO = [
    _query("PatientID", "Exact match, or wildcards * and ?"),
    _query("PatientName", "Wildcards * and ?; case-insensitive"),
    _query("StudyDate", "YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end may be left open)"),
    _query("StudyInstanceUID", "One UID, or several separated by commas"),
    _query("SeriesInstanceUID", "One UID, or several separated by commas"),
    _query("ModalitiesInStudy", "A modality, e.g. CT"),
    _query("Modality", "A series' modality"),
    _query("AccessionNumber", "Exact match"),
    _query("includefield", "Attributes to return beyond the defaults (keyword or tag), or 'all'"),
    _query("fuzzymatching", "Person names matched on any part", type="boolean"),
    _query("limit", "At most this many results", type="integer", minimum=0),
    _query("offset", "Skip this many results", type="integer", minimum=0),
]
# PS3.18 §8.3.5.1.3: the rendering options
RENDERED = [
    _query("window", "center,width[,linear|sigmoid]"),
    _query("viewport", "width,height of the picture in pixels"),
    _query("quality", "JPEG quality, 1 to 100", type="integer", minimum=1, maximum=100),
]
SEARCH = re.compile(r"^/dicomweb/(studies(/\{study_uid\}(/series(/\{series_uid\})?)?)?/)?(studies|series|instances)$")
PICTURE = re.compile(r"^/dicomweb/.*/(rendered|thumbnail)$")


def _json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


BODIES = {
    ("post", "/api/reports"): _json_body(ReportIn.model_json_schema()),
    ("post", "/api/visits/icode"): _json_body({"type": "object", "required": ["study_uid"],
                                               "properties": {"study_uid": {"type": "string", "maxLength": 64}}}),
    **{("post", path): {"required": True, "content": {
        'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}}}
       for path in ("/dicomweb/studies", "/dicomweb/studies/{study_uid}")},
}


def describe(schema: dict) -> dict:
    """``schema`` with the DICOMweb parameters and the APIs' bodies added (in place)."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            extra = QIDO if method == "get" and SEARCH.match(path) else \
                RENDERED if method == "get" and PICTURE.match(path) else []
            if extra:
                known = {parameter["name"] for parameter in operation.get("parameters", [])}
                operation.setdefault("parameters", []).extend(p for p in extra if p["name"] not in known)
            if (method, path) in BODIES:
                operation["requestBody"] = BODIES[method, path]
    return schema


def install(app: FastAPI) -> None:
    """``app.openapi()`` answers the described schema (it is not served: ``openapi_url`` is off)."""
    build = app.openapi

    def described() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = describe(build())
        return app.openapi_schema

    app.openapi = described
