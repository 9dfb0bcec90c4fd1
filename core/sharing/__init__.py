"""Sharing: share links a patient gives a doctor (with an optional password, an expiry and
options), the recipient's session limited to exactly the shared studies, and revoking.

``service`` makes, opens and revokes shares; ``routes`` are the patient's and the
recipient's pages. A share session is a principal of kind ``share`` whose scope lists
its studies (``study:<id>``) or, for the whole portfolio, its patients (``patient:<id>``),
and its options (``download``, ``reshare``, ``hide_details``): ``core.studies.queries``
and the access gate do the rest.
"""
