"""Chunked volume storage and region-readable sources for every input format."""
