"""What the radnet_icode tests share: the three centres of sites/radnet.yaml."""

CENTRES = [
    {"key": "la-westside", "name": "Westside Imaging Center", "state": "CA", "region": "Southern California",
     "phone": "(310) 555-0142", "institution_names": ["Westside Imaging Center"]},
    {"key": "austin-north", "name": "North Austin Imaging", "state": "TX", "region": "Central Texas",
     "phone": "(512) 555-0178", "institution_names": ["North Austin Imaging"]},
    {"key": "brooklyn-heights", "name": "Brooklyn Heights Radiology", "state": "NY", "region": "New York City",
     "phone": "(718) 555-0193", "institution_names": ["Brooklyn Heights Radiology"]},
]
