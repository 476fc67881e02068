"""Maps between label vocabularies (package data; see cxr.labels)."""
