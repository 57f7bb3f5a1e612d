"""OHIF through the DICOMweb bridge: QIDO/WADO/STOW against the stored volumes, the MONAI Label panel's
infer and next-sample calls, and the OHIF build shipped in the monailabel wheel in a real browser."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
import tifffile
import zarr
from conftest import wait_for

from lib.dicomweb.series import uid_for

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_LOCAL = REPO.parent / "shared" / "tools" / "chromium-local.sh"
ARTIFACTS = Path(os.environ.get("AXONSEG_TEST_ARTIFACTS", REPO / "work" / "test-artifacts"))
QIDO, WADO = "/proxy/dicom/qido", "/proxy/dicom/wado"


@pytest.fixture(scope="module")
def copies(server):
    """Copies of two sample images under ids of their own: what these tests label or lease is gone after
    them, so the other tests of the shared server see the datastore they expect."""
    ids = {"ohif_em": "gala_fibsem.h5", "ohif_ls": "trailmap_chunk.nrrd"}
    for image, name in ids.items():
        with open(REPO / "sample_data" / name, "rb") as f:
            reply = requests.put(f"{server.url}/datastore/?image={image}", files={"file": (name, f)}, timeout=600)
        assert reply.status_code == 200, reply.text
    yield ids
    for image in ids:
        requests.delete(f"{server.url}/datastore/image", params={"id": image}, timeout=120)


def _value(item: dict, tag: str):
    return item[tag]["Value"][0] if "Value" in item.get(tag, {}) else None


def _studies(url: str, **query) -> list[dict]:
    reply = requests.get(f"{url}{QIDO}/studies", params=query, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/dicom+json")
    return reply.json()


def _series(url: str, image: str) -> tuple[str, str, list[dict]]:
    """The study UID, the whole-image series UID and its instance metadata (DICOM JSON)."""
    study = uid_for("image", image)
    series = uid_for("region", image)
    reply = requests.get(f"{url}{WADO}/studies/{study}/series/{series}/metadata", timeout=120)
    assert reply.status_code == 200, reply.text
    return study, series, reply.json()


def _multipart_parts(reply: requests.Response) -> list[bytes]:
    from lib.dicomweb.seg import stow_parts

    return stow_parts(reply.content, reply.headers["content-type"])


def _stored(server, image: str) -> np.ndarray:
    return zarr.open_array(str(server.workdir / "volumes" / f"{image}.ome.zarr" / "0"), mode="r")[:]


def test_wide_and_float_voxels_map_onto_uint16_with_a_rescale_that_gives_them_back():
    from types import SimpleNamespace

    from lib.dicomweb.series import PixelEncoding
    from lib.transforms.intensity import IntensityStats

    values = np.linspace(-3.5, 1200.25, 1000, dtype=np.float32)
    stats = IntensityStats({}, minimum=float(values.min()), maximum=float(values.max()))
    encoding = PixelEncoding.of(SimpleNamespace(dtype="float32"), stats)
    stored = encoding.encode(values)
    assert stored.dtype == np.dtype("<u2") and stored.min() == 0 and stored.max() == 65535
    assert np.abs(stored * encoding.slope + encoding.intercept - values).max() <= encoding.slope  # RescaleSlope
    native = PixelEncoding.of(SimpleNamespace(dtype="int16"), stats)
    assert native.signed and native.encode(np.array([-7], np.int16)).tobytes() == np.array([-7], "<i2").tobytes()


def test_reply_labels_as_classes_or_ids_that_fit_the_asked_dtype(tmp_path):
    from lib.errors import InvalidRequest
    from lib.infers.request import parse_infer_request
    from lib.infers.segmentation import reply_label
    from lib.wiring import init_task_configs

    spec = init_task_configs(str(tmp_path))["mitochondria"].spec
    ids = np.array([[[0, 1, 300]]], np.uint32)
    classes = reply_label(ids, parse_infer_request(spec, {"label_values": "classes"}), spec)
    assert classes.dtype == np.uint8 and classes.tolist() == [[[0, 1, 1]]]
    assert reply_label(ids, parse_infer_request(spec, {}), spec).tolist() == ids.tolist()
    with pytest.raises(InvalidRequest, match="more than uint8"):
        reply_label(ids, parse_infer_request(spec, {"result_dtype": "uint8"}), spec)
    with pytest.raises(InvalidRequest, match="label_values"):
        parse_infer_request(spec, {"label_values": "probabilities"})


def test_study_search_lists_the_sample_images_with_matching_and_paging(server):
    names = {_value(s, "00100020") for s in _studies(server.url)}
    assert {"gala_fibsem", "trailmap_chunk", "trailmap_original"} <= names
    fuzzy = _studies(server.url, PatientName="TRAILMAP", fuzzymatching="true")
    assert {_value(s, "00100020") for s in fuzzy} == {n for n in names if "trailmap" in n}
    assert _studies(server.url, PatientName="TRAILMAP") == []  # exact match is case-sensitive
    assert {_value(s, "00100020") for s in _studies(server.url, **{"00100020": "*fibsem*"})} == {"gala_fibsem"}
    uid = uid_for("image", "gala_fibsem")
    assert [_value(s, "0020000D") for s in _studies(server.url, StudyInstanceUID=f"1.2.3\\{uid}")] == [uid]
    everything = _studies(server.url, limit=100)
    assert _studies(server.url, limit=1, offset=1) == everything[1:2]
    assert _value(everything[0], "00080061") == "MR" and _value(everything[0], "00201208") > 0


def test_series_carry_the_volume_geometry_and_pixels_keep_their_dtype(server):
    info = requests.get(f"{server.url}/datastore/image/info", params={"image": "trailmap_chunk"}, timeout=30).json()
    study, series, instances = _series(server.url, "trailmap_chunk")
    shape, spacing = info["shape"], info["spacing_um"]
    assert len(instances) == shape[0]
    found = requests.get(f"{server.url}{QIDO}/studies/{study}/series", timeout=30).json()
    assert series in [_value(s, "0020000E") for s in found]
    by_number = sorted(instances, key=lambda i: _value(i, "00200013"))
    positions = np.array([i["00200032"]["Value"] for i in by_number], float)
    assert np.allclose(np.diff(positions[:, 2]), spacing[0]) and np.allclose(positions[:, :2], positions[0, :2])
    first = by_number[0]
    assert first["00280030"]["Value"] == [spacing[1], spacing[2]]  # PixelSpacing: rows (y), columns (x), 1 µm = 1 mm
    assert first["00180050"]["Value"] == [spacing[0]] and first["00200037"]["Value"] == [1, 0, 0, 0, 1, 0]
    assert (_value(first, "00280010"), _value(first, "00280011")) == (shape[1], shape[2])
    stored = _stored(server, "trailmap_chunk")
    assert _value(first, "00280100") == stored.dtype.itemsize * 8 and _value(first, "00281051") > 0
    # frames are the stored voxels, in the stored dtype; the instance is a valid DICOM file
    z = 17
    sop = series + f".{z + 1}"
    frame = requests.get(f"{server.url}{WADO}/studies/{study}/series/{series}/instances/{sop}/frames/1", timeout=60)
    assert frame.status_code == 200 and "transfer-syntax=1.2.840.10008.1.2.1" in frame.content.decode("latin-1")
    pixels = np.frombuffer(_multipart_parts(frame)[0], stored.dtype.newbyteorder("<")).reshape(shape[1:])
    assert np.array_equal(pixels, stored[z])
    part10 = requests.get(f"{server.url}{WADO}/studies/{study}/series/{series}/instances/{sop}", timeout=60)
    ds = pydicom.dcmread(io.BytesIO(_multipart_parts(part10)[0]))
    assert np.array_equal(ds.pixel_array, stored[z]) and ds.SOPInstanceUID == sop and ds.Modality == "MR"
    # deterministic UIDs: the same on every request and every server
    assert _series(server.url, "trailmap_chunk")[2][0]["00080018"] == instances[0]["00080018"]


@pytest.mark.parametrize(
    "path, status",
    [
        (f"{WADO}/studies/1.2.3/metadata", 404),
        (f"{QIDO}/studies/1.2.3/series", 404),
        (f"{WADO}/studies/{{study}}/series/{{series}}/instances/{{series}}.999/frames/1", 404),
        (f"{WADO}/studies/{{study}}/series/{{series}}/instances/{{series}}.1/frames/2", 404),
        (f"{WADO}/studies/{{study}}/series/{{series}}/instances/{{series}}.1/frames/x", 400),
        (f"{WADO}/studies/{{study}}/series/{{series}}/instances/9.9.9/metadata", 404),
        (f"{QIDO}/studies?limit=many", 400),
        (f"{WADO}/../../etc/passwd", 404),
    ],
)
def test_unknown_dicomweb_resources_are_clear_errors(server, path, status):
    study, series = uid_for("image", "trailmap_chunk"), uid_for("region", "trailmap_chunk")
    reply = requests.get(server.url + path.format(study=study, series=series), timeout=30)
    assert reply.status_code == status and reply.json()["detail"]


def _seg_of(server, image: str, mask: np.ndarray, label: str) -> bytes:
    """A DICOM SEG of ``mask`` over the image's series, written by pydicom-seg (not by the bridge)."""
    import pydicom_seg

    study, series, instances = _series(server.url, image)
    sources = []
    for item in sorted(instances, key=lambda i: _value(i, "00200013")):
        sop = _value(item, "00080018")
        reply = requests.get(f"{server.url}{WADO}/studies/{study}/series/{series}/instances/{sop}", timeout=60)
        sources.append(pydicom.dcmread(io.BytesIO(_multipart_parts(reply)[0])))
    first = sources[0]
    itk_mask = sitk.GetImageFromArray(mask.astype(np.uint8))
    itk_mask.SetSpacing([float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), float(first.SliceThickness)])
    itk_mask.SetOrigin([float(v) for v in first.ImagePositionPatient])
    template = pydicom_seg.template.from_dcmqi_metainfo(
        {
            "ContentCreatorName": "tester",
            "SeriesDescription": "test",
            "SeriesNumber": "300",
            "InstanceNumber": "1",
            "segmentAttributes": [
                [
                    {
                        "labelID": 1,
                        "SegmentLabel": label,
                        "SegmentAlgorithmType": "MANUAL",
                        "SegmentedPropertyCategoryCodeSequence": {
                            "CodeValue": "91723000",
                            "CodingSchemeDesignator": "SCT",
                            "CodeMeaning": "Anatomical Structure",
                        },
                        "SegmentedPropertyTypeCodeSequence": {
                            "CodeValue": "40357008",
                            "CodingSchemeDesignator": "SCT",
                            "CodeMeaning": "Mitochondrion",
                        },
                    }
                ]
            ],
        }
    )
    ds = pydicom_seg.MultiClassWriter(template, skip_empty_slices=True).write(itk_mask, sources)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _stow(url: str, parts: list[bytes], content_type: str | None = None) -> requests.Response:
    boundary = "axonsegtestboundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'}
    return requests.post(f"{url}{WADO}/studies", data=body, headers=headers, timeout=120)


def _versions(url: str, image: str, structure: str) -> list[dict]:
    reply = requests.get(f"{url}/labels/{image}/versions", timeout=30).json()
    return [v for v in reply if v["structure"] == structure]


def test_a_stored_dicom_seg_becomes_a_label_version_of_its_structure(server, copies):
    shape = requests.get(f"{server.url}/datastore/image/info", params={"image": "ohif_em"}, timeout=30).json()
    mask = np.zeros(shape["shape"], bool)
    mask[3:6, 10:30, 20:45] = True
    mask[9, 40:50, 5:9] = True
    seg = _seg_of(server, "ohif_em", mask, "Mitochondria")
    before = len(_versions(server.url, "ohif_em", "mitochondria"))
    # nothing is written for bad bodies
    assert _stow(server.url, [seg], content_type="application/dicom").status_code == 415
    assert _stow(server.url, [b"not dicom at all"]).status_code == 400
    wrong = _seg_of(server, "ohif_em", mask, "Myelin")
    assert "names no structure" in _stow(server.url, [wrong]).json()["detail"]
    empty = pydicom.dcmread(io.BytesIO(seg))
    empty.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    empty.save_as(buffer)
    assert _stow(server.url, [buffer.getvalue()]).status_code == 404
    assert len(_versions(server.url, "ohif_em", "mitochondria")) == before

    reply = _stow(server.url, [seg])
    assert reply.status_code == 200, reply.text
    assert reply.json()["00081199"]["Value"][0]["00081155"]["Value"] == [
        pydicom.dcmread(io.BytesIO(seg)).SOPInstanceUID
    ]
    versions = _versions(server.url, "ohif_em", "mitochondria")
    assert len(versions) == before + 1
    label = requests.get(f"{server.url}/datastore/label", params={"label": "ohif_em", "tag": "final"}, timeout=60)
    assert label.status_code == 200
    path = server.workdir / "stowed.nrrd"
    path.write_bytes(label.content)
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.array_equal(saved > 0, mask)


def test_the_panel_infers_on_a_series_uid_and_next_sample_names_the_study(server, copies):
    series = uid_for("region", "ohif_ls")
    # what OHIF's panel sends (MonaiLabelClient.infer of the shipped build)
    params = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
    reply = requests.post(
        f"{server.url}/infer/axon",
        params={"image": series, "output": "image"},
        data={"params": json.dumps({**params, "restore_label_idx": False})},
        timeout=600,
    )
    assert reply.status_code == 200, reply.text
    header, _, data = reply.content.partition(b"\n\n")
    assert b"encoding: raw" in header and b"type: unsigned char" in header  # what OHIF's nrrd.js reads
    shape = requests.get(f"{server.url}/datastore/image/info", params={"image": "ohif_ls"}, timeout=30).json()
    values = np.frombuffer(data, np.uint8)
    assert values.size == int(np.prod(shape["shape"])) and set(np.unique(values)) <= {0, 1} and values.any()
    unknown = requests.post(f"{server.url}/infer/axon", params={"image": "1.2.3.4"}, timeout=60)
    assert unknown.status_code == 404 and "no series" in unknown.json()["detail"]
    bad = requests.post(
        f"{server.url}/infer/axon", params={"image": series}, data={"params": '{"result_dtype": "float"}'}
    )
    assert bad.status_code == 400 and "result_dtype" in bad.json()["detail"]
    # as the suite's annotator (the Slicer tests'), so its lease hides nothing from them
    sample = requests.post(f"{server.url}/activelearning/random", json={"client_id": "pytest-annotator"}, timeout=60)
    assert sample.status_code == 200, sample.text
    found = sample.json()
    region_info = requests.get(f"{server.url}/datastore/image/info", params={"image": found["id"]}, timeout=30).json()
    assert found["StudyInstanceUID"] == uid_for("image", region_info["image"])
    assert found["SeriesInstanceUID"] == uid_for("region", found["id"])


def _coloured(path: Path, box=(60, 800, 290, 1100)) -> int:
    """Pixels of the viewport area whose channels differ (an overlay), against the grey image."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB")).astype(int)[box[0] : box[1], box[2] : box[3]]
    return int(((a.max(-1) - a.min(-1)) > 60).sum())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_ohif_in_a_real_browser_lists_opens_segments_and_saves(server, copies):
    """The shipped OHIF build in headless chromium (every host but 127.0.0.1 unresolvable): the study list,
    the MONAI Label mode with its panel running a model, and a segmentation saved back as a label version
    (OHIF's "Download DICOM SEG", then its study list's Upload, which stores it over STOW-RS)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = "ohif_ls"  # a copy of trailmap_chunk
    study = uid_for("image", image)
    shape = requests.get(f"{server.url}/datastore/image/info", params={"image": image}, timeout=30).json()["shape"]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM_LOCAL), headless=False)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        context.add_cookies([{"name": "MONAILABEL_SERVER_URL", "value": f"{server.url}/", "url": server.url}])
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(f"{server.url}/ohif/", timeout=120000)
        for name in ("gala_fibsem", "trailmap_chunk", "trailmap_original", image):
            page.get_by_text(name, exact=True).first.wait_for(timeout=120000)
        page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))

        page.goto(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={study}", timeout=120000)
        page.wait_for_selector(".settingsTable button.actionButton", timeout=120000)
        slider = page.locator("input.imageSlider").first
        slider.wait_for(timeout=120000)
        assert int(slider.get_attribute("max")) == shape[0] - 1  # one frame per z section
        time.sleep(10)  # the MPR viewports render
        opened = ARTIFACTS / "ohif-opened.png"
        page.screenshot(path=str(opened))
        from PIL import Image

        pixels = np.asarray(Image.open(opened).convert("L"))[100:780, 290:1100]
        assert pixels.std() > 10  # the volume is drawn, not a blank viewport

        page.click(".settingsTable button.actionButton")  # connect the panel to this server
        page.wait_for_selector(".modelSelector select", timeout=60000)
        models = page.eval_on_selector_all(".modelSelector select option", "els => els.map(e => e.value)")
        assert {"axon", "membrane", "mitochondria", "synapse"} <= set(models)
        page.locator(".modelSelector select").first.select_option("axon")
        with page.expect_response(lambda r: "/infer/axon" in r.url, timeout=600000) as response:
            page.locator(".modelSelector button", has_text="Run").first.click()
        assert response.value.status == 200
        time.sleep(8)
        segmented = ARTIFACTS / "ohif-segmented.png"
        page.screenshot(path=str(segmented))
        assert _coloured(segmented) > _coloured(opened) + 500  # the axon overlay

        # save: paint in OHIF's segmentation mode, download the DICOM SEG, upload it from the study list
        before = len(_versions(server.url, image, "axon"))
        page.goto(f"{server.url}/ohif/segmentation?StudyInstanceUIDs={study}", timeout=120000)
        page.get_by_text("Add Segmentation").wait_for(timeout=120000)
        time.sleep(5)
        if page.get_by_text("Confirm and Hide").count():
            page.get_by_text("Confirm and Hide").click()
        page.get_by_text("Add Segmentation").click()
        time.sleep(2)
        page.locator("[data-cy=Brush]").first.click()
        page.mouse.move(650, 400)
        page.mouse.down()
        for i in range(20):
            page.mouse.move(650 + 8 * i, 400 + 4 * i)
        page.mouse.up()
        time.sleep(2)
        page.screenshot(path=str(ARTIFACTS / "ohif-painted.png"))
        page.mouse.click(1138, 353)  # the segmentation's menu
        page.get_by_text("Export & Download").first.click()
        with page.expect_download(timeout=60000) as download:
            page.get_by_text("Download DICOM SEG").first.click()
        seg_file = ARTIFACTS / "ohif-segmentation.dcm"
        download.value.save_as(str(seg_file))
        page.goto(f"{server.url}/ohif/", timeout=120000)
        page.get_by_text("Upload").first.click()
        with page.expect_response(lambda r: r.url.endswith(f"{WADO}/studies") and r.request.method == "POST") as stow:
            page.locator("input[type=file]").first.set_input_files(str(seg_file))
        assert stow.value.status == 200, stow.value.text()
        wait_for(lambda: len(_versions(server.url, image, "axon")) == before + 1, 30, "the new axon label version")
        browser.close()
    assert not errors, errors
    seg = pydicom.dcmread(str(seg_file))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid_for("region", image)


def test_regions_are_series_of_their_images_study_placed_where_they_lie(server):
    """An image split into annotation regions: one study, the whole image and each region as series; a
    region's sections sit at its offset and hold its voxels; the panel's infer on a region's series UID
    predicts that region."""
    from lib.transforms.io import Volume, write_volume

    source = tifffile.imread(REPO / "sample_data" / "trailmap_original.tif")
    volume = np.concatenate([source] * 6)  # 606 sections of real light-sheet data: more than two regions
    root = server.workdir / "volume_roots"
    root.mkdir(exist_ok=True)
    path = write_volume(root / "ohif_regions.zarr", Volume(volume, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), None))
    body = {"path": path, "image": "ohif_regions", "dataset": "raw", "modality": "light-sheet"}
    registered = requests.post(f"{server.url}/volumes/register", json=body, timeout=600)
    assert registered.status_code == 200, registered.text
    try:
        study = uid_for("image", "ohif_regions")
        found = requests.get(f"{server.url}{QIDO}/studies/{study}/series", timeout=60).json()
        regions = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()["objects"]
        ids = sorted(r for r, v in regions.items() if v.get("image", {}).get("info", {}).get("image") == "ohif_regions")
        assert len(ids) > 2
        assert {_value(s, "0020000E") for s in found} == {uid_for("region", r) for r in [*ids, "ohif_regions"]}
        region = ids[1]
        info = requests.get(f"{server.url}/datastore/image/info", params={"image": region}, timeout=30).json()
        series = uid_for("region", region)
        instances = requests.get(f"{server.url}{WADO}/studies/{study}/series/{series}/metadata", timeout=60).json()
        assert len(instances) == info["shape"][0]
        positions = sorted(i["00200032"]["Value"][2] for i in instances)
        assert positions[0] == info["offset"][0] * 2.0  # z offset in sections times the 2 µm spacing
        sop = f"{series}.1"
        frame = requests.get(f"{server.url}{WADO}/studies/{study}/series/{series}/instances/{sop}/frames/1", timeout=60)
        z, y, x = info["offset"]
        expected = volume[z, y : y + info["shape"][1], x : x + info["shape"][2]]
        assert np.array_equal(np.frombuffer(_multipart_parts(frame)[0], "<u2").reshape(expected.shape), expected)
        reply = requests.post(
            f"{server.url}/infer/axon", params={"image": series, "output": "json"}, data={"params": "{}"}, timeout=600
        )
        assert reply.status_code == 200 and reply.json()["shape"] == info["shape"], reply.text
    finally:
        requests.delete(f"{server.url}/datastore/image", params={"id": "ohif_regions"}, timeout=120)
