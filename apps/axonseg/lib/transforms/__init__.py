"""Microscopy readers/writers and array transforms."""
