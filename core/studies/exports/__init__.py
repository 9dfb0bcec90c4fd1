"""Exports: a patient's studies as a ZIP download, an ISO disc image laid out to IHE
PDI, or JPG pictures, each built by a background job with progress (DESIGN §4).

``service`` asks for an export and runs the job; ``layout`` makes what every DICOM
format shares (file IDs, DICOMDIR, README, INDEX.HTM, zeroed preambles);
``formats`` writes the files; ``routes`` are the pages.
"""
