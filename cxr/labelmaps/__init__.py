"""Vocabulary maps (data): one CSV per source vocabulary, read by :func:`cxr.labels.load_map`."""
