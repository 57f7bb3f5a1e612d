"""Volumes: how they are stored, and how they are computed on block by block.

Storage: :mod:`.formats` (untrusting region readers, one module per input format), :mod:`.store` (the chunked
OME-Zarr store), :mod:`.outputs` (a whole-volume job's outputs), :mod:`.upgrade` (older work folders),
:mod:`.roots` (where volumes may be read from). Compute: :mod:`.blocks` (plan, windows, components, steps).
Both speak :mod:`.regions` (typed boxes of voxels); :mod:`.segment` is the command-line client of whole-volume jobs.
"""
