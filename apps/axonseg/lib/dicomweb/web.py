"""The DICOMweb bridge, answered from the datastore (lib/api/dicomweb.py serves it): what the OHIF build in the
monailabel wheel calls (its ``app-config.js``
sets ``qidoRoot`` and ``wadoRoot`` to MONAI Label's ``/proxy/dicom/...``), answered from the datastore.

    GET  /proxy/dicom/qido/studies                                  QIDO-RS study search
    GET  /proxy/dicom/qido/studies/{study}/series                   series search ({study} optional)
    GET  /proxy/dicom/qido/studies/{study}/series/{series}/instances   instance search
    GET  /proxy/dicom/wado/studies/{study}[/series/{series}[/instances/{sop}]]/metadata   DICOM JSON
    GET  /proxy/dicom/wado/studies/{study}/series/{series}/instances/{sop}/frames/1   pixels (bulk data)
    GET  /proxy/dicom/wado/studies/{study}/series/{series}[/instances/{sop}]   DICOM instances
    POST /proxy/dicom/wado/studies[/{study}]                        STOW-RS: a DICOM SEG becomes label versions

Searches take the query keys OHIF sends: attribute keywords or tags (``PatientName``, ``00100020``),
``*``/``?`` wildcards, ``fuzzymatching`` (case-insensitive, any part), UID lists, date ranges,
``limit``, ``offset`` and ``includefield`` (every attribute is always included).

With ``--conf dicomweb_url`` or ``AXONSEG_DICOMWEB_URL`` (a lab's Orthanc or other DICOMweb server), the
same routes are MONAI Label's proxy to that server instead (its credentials: MONAI Label's
``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD``).
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.responses import Response, StreamingResponse
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..auth.identity import caller
from ..errors import InvalidRequest, NotFound
from .seg import read_segmentation, referenced_series, stow_instances
from .series import MR_IMAGE_STORAGE, TRANSFER_SYNTAX, Catalog, FrameCache, SeriesView

DICOM_JSON = "application/dicom+json"
CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}
MAX_LIMIT = 1000


# --- searching (QIDO-RS) --------------------------------------------------------------------------
def _matches(ds: Dataset, key: str, wanted: str, fuzzy: bool) -> bool:
    tag = _tag(key)
    if tag is None:
        return True  # a key this server does not match on is ignored (PS3.18 8.3.4)
    keyword = keyword_for_tag(tag)
    if keyword not in ds:
        return wanted in ("", "*")
    element = ds.data_element(keyword)
    if element is None:
        return wanted in ("", "*")
    value = element.value
    values = [str(v) for v in (value if isinstance(value, (list, MultiValue)) else [value])]
    vr = dictionary_VR(tag)
    if vr == "UI":
        return any(v in re.split(r"[\\,]", wanted) for v in values)
    if vr == "DA" and "-" in wanted:
        low, _, high = wanted.partition("-")
        return any((not low or v >= low) and (not high or v <= high) for v in values)
    if fuzzy:
        wanted, values = wanted.lower(), [v.lower() for v in values]
        if not any(c in wanted for c in "*?"):
            wanted = f"*{wanted}*"
    if any(c in wanted for c in "*?"):
        return any(fnmatch.fnmatchcase(v, wanted) for v in values)
    return any(v == wanted for v in values)


def _tag(key: str) -> int | None:
    if re.fullmatch(r"[0-9a-fA-F]{8}", key):
        return int(key, 16) if keyword_for_tag(int(key, 16)) else None
    return tag_for_keyword(key)


def _search(datasets: list[Dataset], query: dict[str, str]) -> Response:
    fuzzy = query.get("fuzzymatching", "false").lower() == "true"
    filters = {k: v for k, v in query.items() if k not in CONTROL_KEYS}
    found = [ds for ds in datasets if all(_matches(ds, k, v, fuzzy) for k, v in filters.items())]
    try:
        offset = max(0, int(query.get("offset", 0)))
        limit = min(MAX_LIMIT, max(0, int(query.get("limit", MAX_LIMIT))))
    except ValueError:
        raise InvalidRequest("limit and offset must be whole numbers") from None
    return _json([ds.to_json_dict() for ds in found[offset : offset + limit]])


def _json(value: Any) -> Response:
    return Response(json.dumps(value), media_type=DICOM_JSON)


def _series_datasets(cat: Catalog, study_uid: str | None) -> list[Dataset]:
    studies = [cat.study(study_uid)] if study_uid else cat.studies
    out = []
    for study in studies:
        for series in study.series:
            ds = series.series_dataset()
            ds.StudyInstanceUID = study.uid
            out.append(ds)
    return out


def _instance_datasets(series_list: list[SeriesView]) -> list[Dataset]:
    out = []
    for series in series_list:
        for z in range(series.shape[0]):
            ds = series.series_dataset()
            ds.StudyInstanceUID = series.study_uid
            ds.SOPInstanceUID = series.sop_uid(z)
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.InstanceNumber = z + 1
            ds.Rows, ds.Columns = series.shape[1], series.shape[2]
            out.append(ds)
    return out


def _multipart(parts: Iterable[bytes], media_type: str, headers: str = "") -> StreamingResponse:
    """A multipart/related reply, written part by part as ``parts`` yields them (a whole series is never
    held at once); Starlette iterates a plain generator in its thread pool."""
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for part in parts:
            yield f"--{boundary}\r\nContent-Type: {media_type}{headers}\r\n\r\n".encode() + part + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingResponse(body(), media_type=f'multipart/related; type="{media_type}"; boundary={boundary}')


class DicomWeb:
    """QIDO-RS, WADO-RS and STOW-RS over the datastore's images, regions and labels."""

    def __init__(self, db: Any, datastore: Any, frames: FrameCache, max_voxels: int):
        self.db, self.datastore, self.frames, self.max_voxels = db, datastore, frames, max_voxels

    def catalog(self) -> Catalog:
        return Catalog.of(self.db, self.max_voxels)

    def qido(self, path: str, query: dict[str, str]) -> Response:
        """A QIDO-RS search (``path`` after ``/proxy/dicom/qido/``)."""
        cat = self.catalog()
        parts = path.strip("/").split("/")
        if parts == ["studies"]:
            return _search([s.dataset() for s in cat.studies], query)
        if parts == ["series"] or (len(parts) == 3 and parts[0] == "studies" and parts[2] == "series"):
            return _search(_series_datasets(cat, parts[1] if len(parts) == 3 else None), query)
        if len(parts) == 5 and parts[0] == "studies" and parts[2] == "series" and parts[4] == "instances":
            return _search(_instance_datasets([cat.series(parts[1], parts[3])]), query)
        if len(parts) == 3 and parts[0] == "studies" and parts[2] == "instances":
            return _search(_instance_datasets(list(cat.study(parts[1]).series)), query)
        raise NotFound(f"no QIDO-RS resource '{path}'")

    def _metadata(self, series_list: list[SeriesView], root: str) -> Response:
        stats = self.datastore.stats
        out = []
        for series in series_list:
            image_stats = stats(series.image)
            for z in range(series.shape[0]):
                instance = f"studies/{series.study_uid}/series/{series.series_uid}/instances/{series.sop_uid(z)}"
                uri = f"{root}/{instance}/frames/1"
                out.append(series.instance_json(z, image_stats, uri))
        return _json(out)

    def _pixels(self, series: SeriesView, section: int) -> bytes:
        datastore = self.datastore
        return self.frames.frame(
            series, section, datastore.stats(series.image), lambda roi: datastore.read(series.image, roi)
        )

    def _frames(self, series: SeriesView, section: int, numbers: str) -> Response:
        try:
            wanted = [int(n) for n in numbers.split(",")]
        except ValueError:
            raise InvalidRequest(f"frame numbers must be whole numbers, not '{numbers}'") from None
        if any(n != 1 for n in wanted):
            raise NotFound(f"instance {series.sop_uid(section)} has one frame (frame 1), not {numbers}")
        return _multipart(
            [self._pixels(series, section)], "application/octet-stream", f"; transfer-syntax={TRANSFER_SYNTAX}"
        )

    def _part10(self, series: SeriesView, section: int) -> bytes:
        ds = series.part10(section, self.datastore.stats(series.image), self._pixels(series, section))
        buffer = io.BytesIO()
        ds.save_as(buffer, write_like_original=False)
        return buffer.getvalue()

    def wado(self, path: str, root: str) -> Response:
        """A WADO-RS retrieval (``path`` after ``/proxy/dicom/wado/``); ``root`` is this server's WADO URL."""
        cat = self.catalog()
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "studies":
            raise NotFound(f"no WADO-RS resource '{path}'")
        study = cat.study(parts[1])
        rest = parts[2:]
        if rest == ["metadata"]:
            return self._metadata(list(study.series), root)
        if len(rest) < 2 or rest[0] != "series":
            raise NotFound(f"no WADO-RS resource '{path}'")
        series = cat.series(study.uid, rest[1])
        rest = rest[2:]
        if rest == ["metadata"]:
            return self._metadata([series], root)
        if not rest:
            return _multipart((self._part10(series, z) for z in range(series.shape[0])), "application/dicom")
        if rest[0] != "instances" or len(rest) < 2:
            raise NotFound(f"no WADO-RS resource '{path}'")
        section = series.section_of(rest[1])
        rest = rest[2:]
        if rest == ["metadata"]:
            stats = self.datastore.stats(series.image)
            return _json([series.instance_json(section, stats)])
        if len(rest) == 2 and rest[0] == "frames":
            return self._frames(series, section, rest[1])
        if not rest:
            return _multipart([self._part10(series, section)], "application/dicom")
        raise NotFound(f"no WADO-RS resource '{path}'")

    def stow(self, path: str, content_type: str, study_uid: str | None) -> Response:
        """Each DICOM SEG in the body saved at ``path`` becomes a label version per structure its segments name, as
        a label saved from Slicer. Everything is checked before anything is written."""
        cat = self.catalog()
        datastore = self.datastore
        saved: list[tuple[SeriesView, str, Any, str]] = []
        instances = stow_instances(path, content_type)
        for ds in instances:
            series = cat.by_series_uid(referenced_series(ds))
            if series is None:
                raise NotFound(f"the segmentation's series '{referenced_series(ds)}' is not in the datastore")
            if study_uid and series.study_uid != study_uid:
                raise InvalidRequest(f"the segmentation's series is not in study '{study_uid}'")
            by_structure: dict[str, Any] = {}
            allowed = series.image.structures or list(datastore.specs)
            for segment in read_segmentation(ds, series):
                # a segment named after no structure (OHIF's "Segment 1") is the image's only one, if it has one
                structure = datastore.structure_of(segment.label) or (allowed[0] if len(allowed) == 1 else None)
                if structure is None:
                    raise InvalidRequest(
                        f"segment '{segment.label}' names no structure; name segments after one of {', '.join(allowed)}"
                    )
                if segment.mask.any():
                    by_structure[structure] = by_structure.get(structure, False) | segment.mask
            if not by_structure:
                raise InvalidRequest("the segmentation holds no labelled voxel; nothing was saved")
            saved.extend((series, structure, mask, str(ds.SOPInstanceUID)) for structure, mask in by_structure.items())
        for series, structure, mask, sop_uid in saved:
            info = {
                "structure": structure,
                "client": "dicomweb",
                "segmentation_uid": sop_uid,
                "client_id": caller().client_id("ohif"),  # with auth on, the logged-in user
            }
            datastore.save_label_array(series.region_id, mask.astype("uint32"), "", info)
        stored = Dataset()
        stored.ReferencedSOPSequence = []
        for ds in instances:
            item = Dataset()
            item.ReferencedSOPClassUID = ds.SOPClassUID
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            stored.ReferencedSOPSequence.append(item)
        return _json(stored.to_json_dict())
