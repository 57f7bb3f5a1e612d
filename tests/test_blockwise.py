"""Block-wise segmentation equals one pass: MONAI's windows per block, components and instances stitched."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_file
from monai.inferers import sliding_window_inference
from scipy import ndimage

from lib.infers.postprocessing import postprocess
from lib.infers.predict import sliding_window_probabilities
from lib.transforms.intensity import intensity_stats, normalize
from lib.volumes.blocks.plan import BlockPlan, Postprocess
from lib.volumes.blocks.steps import segment_volume
from lib.volumes.blocks.windows import WindowLattice, block_logits, probabilities, read_padded
from lib.volumes.outputs import VolumeOutput
from lib.volumes.regions import Roi, grid
from lib.wiring import init_task_configs


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    # One thread: `make test` runs two test processes (and their servers) on two cores, where two threads
    # each only contend (a sliding window pass took 16 s with two, 8-11 s with one, on the shared machine).
    torch.set_num_threads(1)
    return init_task_configs(str(tmp_path_factory.mktemp("work")))


def _normalised(spec, name: str, shape) -> np.ndarray:
    with h5py.File(shared_file(name)) as f:
        raw = f["raw"][tuple(slice(0, s) for s in shape)]
    return normalize(raw, intensity_stats(raw), spec.percentiles, spec.intensity_ceiling)


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the non-zero ids of ``a`` and ``b`` are in one-to-one correspondence over the same voxels."""
    both = (a > 0) | (b > 0)
    pairs = np.unique(np.stack([a[both], b[both]], 1), axis=0)
    return bool((pairs != 0).all()) and len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def _blockwise(tmp_path, image, spec, post, network, block, chunks=(16, 32, 32), batch_size=1):
    plan = BlockPlan.make(image.shape, chunks, spec.patch_size, block=block)
    output = VolumeOutput(str(tmp_path / f"{post.method}-{block}"))
    summary = segment_volume(plan, spec, post, lambda roi: image[roi.slices], network, output, batch_size=batch_size)
    return plan, output, summary


# --- the window lattice ------------------------------------------------------------------------
def _monai_logits(network, image, spec, batch_size):
    tensor = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        return sliding_window_inference(
            tensor, spec.patch_size, batch_size, network, spec.overlap, mode="gaussian", padding_mode="replicate"
        )[0, 0].numpy()


def _block_logits(network, image, spec, block, batch_size):
    lattice = WindowLattice(image.shape, spec.patch_size, spec.overlap)
    out = np.zeros(image.shape, np.float32)
    for write in grid(image.shape, block):
        roi = lattice.read_roi(write)
        data = read_padded(lambda r: image[r.slices], lattice, roi)
        out[write.slices] = block_logits(network, data, roi, lattice, write, batch_size=batch_size)
    return out, lattice


def test_block_windows_reproduce_monai_sliding_window_inference_bit_for_bit(configs):
    """Every voxel gets the same windows, weights and summation order as MONAI's one pass: with one
    window per forward pass the blended logits are identical; with two (another batch partner, other
    BLAS kernels) within 1e-5. The sigmoid after them may differ by one float step (SIMD lanes vs the
    scalar tail), which is why the equivalence tests below compare masks and objects."""
    config = configs["axon"]
    network, _, _ = config.weights.load("cpu")
    image = _normalised(config.spec, "trailmap_original.h5", (70, 100, 110))  # no axis a multiple of the window
    for batch_size in (1, 2):
        reference = _monai_logits(network, image, config.spec, batch_size)
        out, _ = _block_logits(network, image, config.spec, (32, 48, 48), batch_size)
        difference = np.abs(out - reference).max()
        assert difference == 0.0 if batch_size == 1 else difference < 1e-5, (batch_size, difference)
        assert np.abs(probabilities(out) - probabilities(reference)).max() <= (1e-7 if batch_size == 1 else 1e-6)


def test_volumes_smaller_than_the_window_are_padded_as_monai_pads(configs):
    config = configs["mitochondria"]  # window 32x96x96
    network, _, _ = config.weights.load("cpu")
    image = _normalised(config.spec, "lucchi_pp_train.h5", (20, 70, 150))
    out, lattice = _block_logits(network, image, config.spec, (8, 32, 64), 1)
    assert lattice.pad_before == (6, 13, 0)
    assert np.array_equal(out, _monai_logits(network, image, config.spec, 1))


# --- plans -------------------------------------------------------------------------------------
def test_write_blocks_are_whole_chunks_cover_the_domain_once_and_batch_into_jobs():
    plan = BlockPlan.make((100, 300, 260), (32, 64, 64), (32, 96, 96), block_mvox=1.0, job_mvox=4.0)
    blocks = plan.blocks()
    cover = np.zeros(plan.image_shape, np.int32)
    for b in blocks:
        cover[b.slices] += 1
        # a block starts on a chunk corner and ends on one (or at the volume's edge)
        assert all(o % c == 0 for o, c in zip(b.offset, plan.chunks))
        assert all(e % c == 0 or e == s for e, c, s in zip(b.end, plan.chunks, plan.image_shape))
    assert (cover == 1).all()
    assert all(b >= 2 * p or b >= s for b, p, s in zip(plan.block, (32, 96, 96), plan.image_shape))
    assert [i for batch in plan.batches() for i in batch] == list(range(len(blocks)))
    assert plan.blocks_per_job == max(1, round(4e6 / np.prod(plan.block)))
    # a ROI grows to whole chunks; the plan survives JSON (SQL)
    roi_plan = BlockPlan.make((100, 300, 260), (32, 64, 64), (32, 96, 96), roi=Roi((40, 70, 10), (10, 100, 20)))
    assert roi_plan.domain == Roi((32, 64, 0), (32, 128, 64))
    assert BlockPlan.from_json(roi_plan.to_json()) == roi_plan


# --- post-processing across blocks -------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    """Logits with tubes crossing many block faces, blobs of every size, and objects that touch only
    diagonally across a block corner; the identity network makes the blend of windows the only arithmetic."""
    rng = np.random.default_rng(3)
    field = np.full((40, 72, 72), -4.0, np.float32)
    z, y, x = np.mgrid[:40, :72, :72]
    field[((y - 36 - 12 * np.sin(z / 6)) ** 2 + (x - 20) ** 2) < 9] = 3.0  # a tube along z
    field[((z - 20) ** 2 + (x - 50 - 8 * np.cos(y / 9)) ** 2) < 6] = 1.0  # a weak tube along y: hysteresis low only
    field[20, 40:44, 48:52] = 5.0  # ... with one seed
    for _ in range(40):
        c = rng.integers(0, [40, 72, 72])
        r = rng.integers(1, 4)
        field[tuple(slice(max(0, a - r), a + r) for a in c)] = rng.choice([0.5, 2.0, 4.0])
    field[15, 31, 31] = field[16, 32, 32] = 3.0  # two voxels meeting only at a block corner (z 16, y/x 32)
    field[15, 30:32, 30:32] = 3.0
    return field


class _Logits(torch.nn.Module):
    def forward(self, x):
        return x.clone()  # MONAI weights its predictor's output in place: never hand back the input view


@pytest.mark.parametrize(
    "method, options",
    [
        ("threshold", {"threshold": 0.5, "min_size": 20}),
        ("hysteresis", {"high": 0.99, "low": 0.6, "min_size": 10}),
        ("bilateral", {"threshold": 0.5, "radius": 1}),
        ("objects", {"threshold": 0.5, "min_size": 10, "min_peak": 0.99, "min_sections": 3}),
    ],
)
def test_stitched_components_equal_one_pass_exactly(tmp_path, configs, synthetic, method, options):
    spec = configs["mitochondria"].spec
    network = _Logits()
    p = sliding_window_probabilities(network, synthetic, spec, sw_batch_size=1)
    reference = postprocess(p, spec, method, **options).astype(bool)
    post = Postprocess.of(spec, method, **options)
    plan, output, summary = _blockwise(tmp_path, synthetic, spec, post, network, block=(16, 32, 32))
    assert len(plan.blocks()) == 27
    labels = output.array("labels")[:]
    instances = output.array("instances")[:]
    assert np.array_equal(labels.astype(bool), reference), (labels.astype(bool) != reference).sum()
    expected, count = ndimage.label(reference, np.ones((3, 3, 3)))
    assert _same_up_to_relabelling(expected, instances)
    assert summary["objects"] == count == len(np.unique(instances)) - 1
    assert summary["joined_across_blocks"] > 0
    # stored as uint8; a float step of the sigmoid can move a value across a rounding edge
    stored = output.array("probabilities")[:].astype(int)
    assert np.abs(stored - np.rint(p * 255)).max() <= 1


def test_an_object_is_kept_by_its_whole_depth_not_its_depth_in_one_block(tmp_path, configs):
    """Synapse rules: a blob 6 sections deep across a z face of the blocks keeps min_sections 5; one 4 deep does not."""
    spec = configs["synapse"].spec
    field = np.full((32, 64, 64), -5.0, np.float32)
    field[13:19, 5:15, 5:15] = 5.0  # 6 sections: 3 in each z block
    field[14:18, 40:50, 40:50] = 5.0  # 4 sections, as big in-plane
    post = Postprocess.of(spec, "objects", threshold=0.5, min_size=10, min_peak=0.9, min_sections=5)
    _, output, summary = _blockwise(tmp_path, field, spec, post, _Logits(), block=(16, 32, 32))
    labels = output.array("labels")[:]
    assert summary["objects"] == 1 and labels[13:19, 5:15, 5:15].all() and not labels[:, 40:50, 40:50].any()


def test_an_object_is_removed_by_its_whole_size_not_its_size_in_one_block(tmp_path, configs):
    """A 6x6x6 cube (216 voxels) split over 8 blocks (27 voxels each) survives min_size 100; a 4x4x4 one does not."""
    spec = configs["mitochondria"].spec
    field = np.full((32, 64, 64), -5.0, np.float32)
    field[13:19, 29:35, 29:35] = 5.0
    field[2:6, 2:6, 2:6] = 5.0
    post = Postprocess.of(spec, "threshold", threshold=0.5, min_size=100)
    _, output, summary = _blockwise(tmp_path, field, spec, post, _Logits(), block=(16, 32, 32))
    labels = output.array("labels")[:]
    assert labels.sum() == 216 and labels[13:19, 29:35, 29:35].all() and summary["objects"] == 1


def test_real_volume_threshold_and_hysteresis_equal_one_pass(tmp_path, configs):
    """The shipped axon network on a light-sheet volume, 12 blocks: identical masks and objects."""
    config = configs["axon"]
    network, _, _ = config.weights.load("cpu")
    image = _normalised(config.spec, "trailmap_original.h5", (64, 96, 120))
    p = sliding_window_probabilities(network, image, config.spec, sw_batch_size=1)
    for method, options in (("threshold", {"min_size": 30}), ("hysteresis", {"high": 0.9, "low": 0.3, "min_size": 30})):
        reference = postprocess(p, config.spec, method, **options).astype(bool)
        post = Postprocess.of(config.spec, method, **options)
        plan, output, _ = _blockwise(tmp_path, image, config.spec, post, network, (32, 32, 64), (32, 32, 32))
        assert len(plan.blocks()) == 12
        instances = output.array("instances")[:]
        assert np.array_equal(instances > 0, reference), method
        assert _same_up_to_relabelling(ndimage.label(reference, np.ones((3, 3, 3)))[0], instances), method


def test_mitochondria_instances_match_one_pass_within_the_stated_tolerance(tmp_path, configs):
    """Watershed instances: the mask is identical; every one-pass instance is matched by one block-wise
    instance at IoU >= 0.95 (the distance transform near a block's context edge differs slightly)."""
    config = configs["mitochondria"]
    network, _, _ = config.weights.load("cpu")
    image = _normalised(config.spec, "lucchi_pp_train.h5", (48, 256, 224))
    p = sliding_window_probabilities(network, image, config.spec, sw_batch_size=1)
    reference = postprocess(p, config.spec, "watershed", instances=True)
    post = Postprocess.of(config.spec, "watershed")
    plan, output, summary = _blockwise(tmp_path, image, config.spec, post, network, (32, 128, 128), (16, 64, 64))
    assert len(plan.blocks()) == 8
    instances = output.array("instances")[:]
    assert np.array_equal(instances > 0, reference > 0)
    ids = np.unique(reference)[1:]
    assert len(ids) >= 4 and summary["objects"] == len(ids)
    for i in ids:
        inside = reference == i
        values, counts = np.unique(instances[inside], return_counts=True)
        best = values[np.argmax(counts)]
        iou = counts.max() / np.count_nonzero(inside | (instances == best))
        assert best != 0 and iou >= 0.95, (i, iou)


def test_pyramids_keep_ids_and_average_probabilities(tmp_path, configs, synthetic):
    spec = configs["mitochondria"].spec
    post = Postprocess.of(spec, "threshold", threshold=0.5, min_size=0)
    big = np.tile(synthetic, (1, 4, 4))  # 288 in-plane: one level down
    _, output, summary = _blockwise(tmp_path, big, spec, post, _Logits(), block=(32, 128, 128), chunks=(16, 64, 64))
    assert summary["levels"]["instances"][1] == [20, 144, 144]
    full, half = output.array("instances")[:], output.array("instances", 1)[:]
    assert np.array_equal(half, full[::2, ::2, ::2])
    p0, p1 = output.array("probabilities")[:].astype(float), output.array("probabilities", 1)[:].astype(float)
    assert abs(p1.mean() - p0.mean()) < 1.0
