"""Neurite tracing (``postprocessing=trace``): seeds, linking costs, anchors, 3D mode, blocks and the API."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from conftest import shared_file
from scipy import ndimage

from lib.configs.registry import SPECS
from lib.errors import InvalidRequest
from lib.infers.postprocessing import postprocess, resolve, structure_label, structure_mask
from lib.infers.tracing import SectionLinks, link_sections, name_tracks, section_segments, trace
from lib.metrics import segmentation_scores
from lib.transforms.io import Volume, read_volume, write_volume
from lib.volumes.blocks.plan import BlockPlan, Postprocess
from lib.volumes.blocks.steps import segment_volume
from lib.volumes.outputs import VolumeOutput

SSTEM = (50.0, 5.0, 5.0)
MEMBRANE = SPECS["membrane"]


def phantom(depth: int = 12, size: int = 96, count: int = 9, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Neurites as Voronoi cells of points drifting ``shift`` pixels per section; the membrane probability
    is 1 on the cells' borders, blurred. Returns (probabilities, true ids)."""
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(3)
    start = rng.uniform(12, size - 12, (count, 2))
    drift = rng.uniform(-1, 1, (count, 2)) * shift
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((depth, size, size), np.int64)
    for z in range(depth):
        centres = start + z * drift
        distance = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
        truth[z] = distance.argmin(-1) + 1
    border = np.stack([find_boundaries(section, mode="thick") for section in truth]).astype(np.float32)
    p = ndimage.gaussian_filter(border, (0, 1, 1))
    return p / p.max(), truth


def _one_to_one(prediction: np.ndarray, truth: np.ndarray) -> bool:
    """Every true id is covered mostly by one predicted id, each predicted id by one true id."""
    inside = prediction > 0
    pairs, counts = np.unique(np.stack([truth[inside], prediction[inside]], 1), axis=0, return_counts=True)
    major = pairs[counts > 0.05 * counts.max()]
    return len(np.unique(major[:, 0])) == len(major) == len(np.unique(major[:, 1]))


# --- the method ---------------------------------------------------------------------------------------
def test_trace_keeps_each_neurite_one_id_through_the_stack():
    p, truth = phantom()
    traced = trace(p, voxel_size_nm=SSTEM, mode="sections")
    assert traced.dtype == np.uint32
    assert np.array_equal(traced == 0, p >= 0.5)  # 0 is the thresholded membrane, ids elsewhere
    assert _one_to_one(traced, truth)
    scores = segmentation_scores(traced, truth)
    assert scores["predicted_objects"] == scores["true_objects"] == 9
    assert scores["voi"] < 0.1 and scores["adapted_rand_error"] < 0.02, scores
    # without linking, each section's segments are objects of their own: every neurite is cut 12 times
    unlinked = np.stack([section_segments(s) + 100 * z for z, s in enumerate(p)]) * (p < 0.5)
    assert segmentation_scores(unlinked, truth)["voi_split"] > 3.0


def test_link_cost_combines_overlap_and_centroid_distance_in_nm():
    """Two sections, one disc each, the second shifted 3 pixels: the cost by hand."""
    yy, xx = np.mgrid[:40, :40]
    first = ((yy - 20) ** 2 + (xx - 15) ** 2 <= 36).astype(np.int32)
    second = ((yy - 20) ** 2 + (xx - 18) ** 2 <= 36).astype(np.int32)
    segments = np.stack([first, second])
    overlap = np.count_nonzero(first & second)
    area = first.sum()
    iou = overlap / (2 * area - overlap)
    radius = np.sqrt(area * 25.0 / np.pi)  # nm, of the smaller segment (both are equal)
    expected = (1 - iou) / 2 + min(1.0, 15.0 / (50.0 + radius)) / 2  # 3 px x 5 nm; reach 1 x 50 nm
    (links,) = link_sections(segments, SSTEM, max_slope=1.0, max_cost=1.0)
    assert links.a.tolist() == [1] and links.b.tolist() == [1]
    assert links.cost[0] == pytest.approx(expected)
    # 5 nm sections: a neurite cannot move 20 pixels from one to the next, so the far disc is no link
    far = np.stack([first, ((yy - 20) ** 2 + (xx - 35) ** 2 <= 36).astype(np.int32)])
    (links,) = link_sections(far, (5.0, 5.0, 5.0), max_slope=1.0, max_cost=0.6)
    assert len(links.a) == 0 and len(links.join_a) == 0
    (links,) = link_sections(far, SSTEM, max_slope=2.0, max_cost=1.0)  # 50 nm sections, slope 2: in reach
    assert links.a.tolist() == [1]


def test_an_over_split_section_joins_the_track_of_the_segment_covering_it():
    square = np.zeros((3, 20, 20), np.int32)
    square[:, 2:18, 2:18] = 1
    square[1, 2:18, 10:18] = 2  # the middle section cuts the neurite in two
    links = link_sections(square, SSTEM, max_cost=0.8, join_cover=0.9)
    traced = name_tracks(square, links)
    assert len(np.unique(traced[traced > 0])) == 1
    assert len(np.unique(name_tracks(square, link_sections(square, SSTEM, max_cost=0.8, join_cover=1.0)))) == 2


def _chain(depth: int, costs) -> tuple[np.ndarray, list[SectionLinks]]:
    segments = np.zeros((depth, 10, 10), np.int32)
    segments[:, 2:8, 2:8] = 1
    one = np.ones(1, np.int32)
    empty = np.zeros(0, np.int32)
    return segments, [SectionLinks(one, one, np.array([c]), empty, empty) for c in costs]


def test_anchors_name_tracks_and_a_track_meeting_two_ids_is_cut_at_its_weakest_link():
    segments, links = _chain(6, [0.1, 0.1, 0.5, 0.1, 0.1])
    anchors = np.zeros(segments.shape, np.uint32)
    anchors[0, 4, 4] = 7
    assert set(np.unique(name_tracks(segments, links, anchors))) == {0, 7}  # one anchor names the track
    anchors[5, 4, 4] = 9
    traced = name_tracks(segments, links, anchors)
    assert (traced[:3, 2:8, 2:8] == 7).all() and (traced[3:, 2:8, 2:8] == 9).all()  # cut after z 2, cost 0.5


def test_a_gap_between_anchors_is_bridged_along_the_interpolated_centroid():
    depth = 7
    segments = np.zeros((depth, 30, 30), np.int32)
    for z in range(depth):
        segments[z, 5:15, 2 + z : 10 + z] = 1  # drifts one pixel per section
        segments[z, 18:28, 18:28] = 2  # a neighbour, never anchored
    one, empty = np.ones(1, np.int32), np.zeros(0, np.int32)
    linked = SectionLinks(one, one, np.array([0.1]), empty, empty)
    broken = SectionLinks(empty, empty, np.zeros(0), empty, empty)
    links = [linked, broken, broken, broken, broken, linked]  # the drifting neurite's links lost in z 1-5
    anchors = np.zeros(segments.shape, np.uint32)
    anchors[0, 8, 4] = anchors[6, 8, 12] = 4
    traced = name_tracks(segments, links, anchors)
    assert all((traced[z][segments[z] == 1] == 4).all() for z in range(depth))
    assert not (traced[segments == 2] == 4).any()
    assert traced[segments == 2].min() > 4  # unanchored ids start above the largest anchor id


def test_isotropic_mode_is_one_3d_watershed_and_anchors_split_an_object():
    p, truth = phantom(depth=24, shift=0.5)
    traced = trace(p, voxel_size_nm=(5.0, 5.0, 5.0), mode="3d")
    assert segmentation_scores(traced, truth)["voi"] < 0.2
    tube = np.ones((20, 16, 16), np.float32)
    tube[:, 3:13, 3:13] = 0.0
    anchors = np.zeros(tube.shape, np.uint32)
    anchors[1, 8, 8], anchors[18, 8, 8] = 3, 5
    split = trace(tube, voxel_size_nm=(5.0, 5.0, 5.0), mode="3d", anchors=anchors)
    assert set(np.unique(split)) == {0, 3, 5}
    assert (split[:5][tube[:5] == 0] == 3).all() and (split[15:][tube[15:] == 0] == 5).all()


def test_trace_options_are_checked_and_its_structure_is_the_membrane():
    for bad in ({"mode": "auto"}, {"max_cost": 1.5}, {"join_cover": 0.4}, {"sigma": -1}, {"min_area": 2.5}):
        with pytest.raises(InvalidRequest):
            resolve(MEMBRANE, "trace", **bad)
    method, options = resolve(MEMBRANE, "trace", mode="3d", max_slope="2")
    assert options["mode"] == "3d" and options["max_slope"] == 2.0 and "anchors" not in options
    with pytest.raises(InvalidRequest, match="anchors"):
        postprocess(np.zeros((2, 8, 8)), MEMBRANE, "threshold", anchors=np.zeros((2, 8, 8), np.uint32))
    label = np.array([[[0, 3, 3, 0]]], np.uint32)
    assert structure_mask(label, "trace").tolist() == [[[True, False, False, True]]]
    assert structure_label(label, "trace").tolist() == [[[1, 0, 0, 1]]]
    assert structure_label(label, "watershed") is label


def _gala_boundaries() -> tuple[np.ndarray, np.ndarray]:
    path = str(shared_file("gala_fibsem_train.h5"))
    truth = read_volume(path, "labels/neurons").array.astype(np.int64)
    p = ndimage.gaussian_filter(read_volume(path, "labels/boundary").array.astype(np.float32), 1.0)
    return p / p.max(), truth


def test_on_ssTEM_like_sections_of_real_fibsem_trace_links_what_3d_components_merge():
    """Every 5th section of gala (50 nm z, as ssTEM) with its true boundaries: a neurite's interior in one
    section overlaps its neighbours' in the next, so 3D components merge nearly everything at any threshold;
    linking per-section segments keeps them apart."""
    p, truth = _gala_boundaries()
    p, truth = p[::5], truth[::5]
    for threshold in (0.3, 0.5, 0.7):
        components = segmentation_scores(ndimage.label(p < threshold)[0], truth)
        assert components["voi_merge"] > 2.5 and components["predicted_objects"] < 10, components
    traced = segmentation_scores(trace(p, threshold=0.3, min_distance=8, voxel_size_nm=(50.0, 10.0, 10.0)), truth)
    assert traced["voi"] < 1.5 and traced["voi_merge"] < 0.5, traced
    assert 0.5 * traced["true_objects"] < traced["predicted_objects"] < 2 * traced["true_objects"], traced


class _Logits(torch.nn.Module):
    def forward(self, x):
        return x.clone()


def test_whole_volume_trace_stitches_ids_across_block_faces(tmp_path):
    """Eight blocks of gala: tracks cut by block faces are joined; as good as one pass, within 0.15 bits."""
    p, truth = _gala_boundaries()
    logits = np.log(np.clip(p, 1e-4, 1 - 1e-4) / np.clip(1 - p, 1e-4, 1)).astype(np.float32)
    post = Postprocess.of(MEMBRANE, "trace")
    assert post.kind == "instances" and post.margin[0] == 0  # sections mode: z faces are joined by contact
    plan = BlockPlan.make(p.shape, (25, 50, 100), MEMBRANE.patch_size, block=(25, 50, 100))
    assert len(plan.blocks()) == 8
    output = VolumeOutput(str(tmp_path / "trace"))
    summary = segment_volume(plan, MEMBRANE, post, lambda roi: logits[roi.slices], _Logits(), output)
    instances = output.array("instances")[:]
    assert summary["joined_across_blocks"] > 0
    assert np.array_equal(output.array("labels")[:].astype(bool), instances == 0)  # the mask is the membrane
    one_pass = segmentation_scores(postprocess(p, MEMBRANE, "trace", voxel_size_nm=MEMBRANE.voxel_size_nm), truth)
    blockwise = segmentation_scores(instances, truth)
    assert blockwise["voi"] < one_pass["voi"] + 0.15, (blockwise, one_pass)


# --- through the API, with the real Slicer client -----------------------------------------------------
def test_slicer_receives_a_traced_label_map_with_one_id_per_neurite(client, server, tmp_path):
    image = read_volume(str(shared_file("gala_fibsem_train.h5")), "raw")
    params = {"postprocessing": "trace", "save_label": False}
    result_path, result = client.infer("membrane", "gala_fibsem", params)
    label = read_volume(result_path)
    assert label.shape == (50, 100, 200) and label.spacing == pytest.approx((0.01, 0.01, 0.01))
    assert np.issubdtype(label.array.dtype, np.integer) and len(np.unique(label.array)) > 10
    assert result["postprocessing"]["method"] == "trace"
    assert result["foreground_voxels"] == int((label.array == 0).sum())  # the membrane, not a sum of ids

    # anchors: the label sent with the request (Slicer's label_in) names the neurites they meet
    anchors = np.zeros(image.array.shape, np.uint16)
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(label.array[10] > 0)), anchors.shape[1:])
    anchors[10, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = 500  # a click inside a neurite (z 10's deepest)
    assert anchors.any()
    path = write_volume(tmp_path / "anchors.nrrd", Volume(anchors, (0.01, 0.01, 0.01)))
    anchored_path, _ = client.infer("membrane", "gala_fibsem", params, label_in=str(path))
    anchored = read_volume(anchored_path).array
    assert (anchored == 500).sum() > (anchored[10] == 500).sum()  # the id follows the neurite to other sections


def test_anchors_that_do_not_fit_get_a_400_and_nothing_is_queued(server, tmp_path):
    wrong = write_volume(tmp_path / "wrong.nrrd", Volume(np.zeros((5, 5, 5), np.uint8), (0.01, 0.01, 0.01)))
    url = f"{server.url}/infer/membrane?image=gala_fibsem"
    with open(wrong, "rb") as f:
        reply = requests.post(url, data={"params": '{"postprocessing": "trace"}'}, files={"label": f}, timeout=120)
    assert reply.status_code == 400 and "grid" in reply.json()["detail"], reply.text
    with open(wrong, "rb") as f:
        reply = requests.post(url, data={"params": "{}"}, files={"label": f}, timeout=60)
    assert reply.status_code == 400 and "trace" in reply.json()["detail"], reply.text


def test_anchors_must_be_whole_ids_on_the_reply_grid(tmp_path):
    from lib.infers.segmentation import read_anchors

    shape = (2, 4, 4)
    good = write_volume(tmp_path / "good.nrrd", Volume(np.full(shape, 3, np.uint16), (1.0, 1.0, 1.0)))
    assert read_anchors(good, shape).dtype == np.uint32
    for name, array in (("fraction", np.full(shape, 0.5, np.float32)), ("negative", np.full(shape, -1, np.int16))):
        path = write_volume(tmp_path / f"{name}.nrrd", Volume(array, (1.0, 1.0, 1.0)))
        with pytest.raises(InvalidRequest, match="whole neurite ids"):
            read_anchors(path, shape)
    with pytest.raises(InvalidRequest, match="grid"):
        read_anchors(good, (2, 4, 5))
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\nnot a header")
    with pytest.raises(InvalidRequest, match="cannot be read"):
        read_anchors(str(tmp_path / "broken.nrrd"), shape)
