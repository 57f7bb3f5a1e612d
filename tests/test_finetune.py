"""Few-label fine-tuning: iterations from labelled voxels, a hold-out that never trains, the publish gate,
replayed recipe data, frozen batch-norm statistics, and regions trained on the model's voxel grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import shared_file

from lib.configs.registry import SPECS
from lib.networks import build_network, save_weights
from lib.trainers.augmentation import training_transforms
from lib.trainers.data import PatchSampler, TrainingVolume, mixing_weights
from lib.trainers.finetune import (
    TooFewLabels,
    decide,
    fine_tune,
    foreground_fraction_for,
    iterations_for,
    split_hold_out,
)
from lib.trainers.supervised import TrainingPlan, train_segmentation

MITO = SPECS["mitochondria"]


def _volume(name: str, shape=(40, 64, 64), foreground: float = 0.1, seed: int = 0) -> TrainingVolume:
    rng = np.random.default_rng(seed)
    target = (rng.random(shape) < foreground).astype(np.uint8)
    image = (0.3 + 0.4 * target + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return TrainingVolume(name, image, target, np.ones(shape, bool))


def test_iterations_scale_with_labelled_voxels_within_the_recipes_bounds():
    recipe = MITO.recipe.fine_tune
    patch = int(np.prod(MITO.patch_size))
    assert iterations_for(1, MITO) == recipe.min_iterations
    assert iterations_for(10**12, MITO) == recipe.max_iterations
    assert iterations_for(20 * patch, MITO) == round(20 * recipe.iterations_per_patch)
    assert iterations_for(40 * patch, MITO) == 2 * iterations_for(20 * patch, MITO)


def test_hold_out_is_a_slab_of_each_region_until_there_are_several_then_whole_regions():
    recipe = MITO.recipe.fine_tune
    few = [_volume("a", (40, 64, 100), seed=1), _volume("b", (80, 64, 64), seed=2)]
    train, held = split_hold_out(few, recipe)
    assert len(train) == len(held) == 2
    for whole, t, h in zip(few, train, held):
        axis = int(np.argmax(whole.image.shape))  # the longest axis is cut
        assert h.image.shape[axis] == round(whole.image.shape[axis] * recipe.hold_out_share)
        # the two parts are the region, split: no voxel both trains and validates
        np.testing.assert_array_equal(np.concatenate([t.image, h.image], axis=axis), whole.image)
        assert "held out" in h.name and "train" in t.name
    many = [_volume(str(i), seed=i) for i in range(8)]
    train, held = split_hold_out(many, recipe)
    assert [v.name for v in held] == ["3", "7"] and len(train) == 6  # every 4th whole region
    assert not {v.name for v in held} & {v.name for v in train}
    train, held = split_hold_out(many[:3], recipe)
    assert [v.name for v in held] == ["2"]  # three regions: the last is held out whole


def test_gate_publishes_only_a_rise_on_new_labels_that_keeps_the_original_within_tolerance():
    assert decide(0.70, 0.50, 0.80, 0.81, 0.02).publish
    assert not decide(0.50, 0.50, 0.90, 0.81, 0.02).publish  # no gain on the new microscope
    worse = decide(0.70, 0.50, 0.78, 0.81, 0.02)  # gained there, forgot the original microscope
    assert not worse.publish and "original test F1 0.780" in worse.reason
    unknown = decide(0.70, 0.50, None, None, 0.02)  # cannot check the original: do not guess
    assert not unknown.publish and "AXONSEG_REFERENCE_DATA" in unknown.reason


def test_class_balance_follows_the_new_labels():
    assert foreground_fraction_for([_volume("sparse", foreground=0.01)]) == pytest.approx(0.1)
    assert foreground_fraction_for([_volume("some", foreground=0.07)]) == pytest.approx(0.28, abs=0.02)
    assert foreground_fraction_for([_volume("dense", foreground=0.4)]) == 0.5


def test_replay_share_of_patches_comes_from_the_recipes_data():
    new = [_volume("new", (32, 96, 96), seed=1)]
    old = [_volume("old-a", (32, 96, 96), seed=2), _volume("old-b", (32, 96, 192), seed=3)]
    weights = mixing_weights(new, old, 0.25)
    assert sum(weights[1:]) == pytest.approx(0.25) and weights[2] == pytest.approx(2 * weights[1])
    sampler = PatchSampler(new + old, MITO.patch_size, 0.3, 0, training_transforms(MITO), weights)
    draws = sampler.rng.choice(3, size=4000, p=sampler._volume_p)
    assert np.mean(draws > 0) == pytest.approx(0.25, abs=0.03)


def test_batch_norm_statistics_stay_those_of_the_recipe_while_fine_tuning(tmp_path):
    spec = SPECS["axon"]  # the batch-norm model
    assert spec.norm == "batch"
    torch.manual_seed(0)
    network = build_network(**spec.network_args())
    served = str(tmp_path / "served.pt")
    save_weights(served, network, spec.network_args(), {})
    before = {k: v.clone() for k, v in network.state_dict().items() if "running_mean" in k}
    volume = _volume("v", (64, 64, 64), foreground=0.2)
    common = dict(epochs=1, iterations_per_epoch=2, batch_size=2, learning_rate=1e-3, init_weights=served)
    for keep in (True, False):
        out = str(tmp_path / f"kept-{keep}.pt")
        train_segmentation(spec, [volume], [], out, TrainingPlan(keep_norm_statistics=keep, **common))
        after = torch.load(out, weights_only=True)["state_dict"]
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same is keep


def test_fine_tune_holds_out_trains_and_gates_on_real_sstem_regions(tmp_path):
    """Two ssTEM regions of the VNC stack on the model's grid: trains on slabs, validates on the rest,
    and a run on labels that say "no mitochondria anywhere" cannot pass the gate."""
    from lib.infers.predict import model_grid_image, model_grid_label
    from lib.transforms.intensity import intensity_stats
    from lib.transforms.io import read_volume

    path = shared_file("drosophila_vnc_stack1_xlt512.h5")
    raw = read_volume(str(path), "raw")
    label = read_volume(str(path), "labels/mito").array
    stats, voxel_size = intensity_stats(raw.array), tuple(1000.0 * s for s in raw.spacing)
    assert voxel_size[0] == pytest.approx(50.0)
    volumes = []
    for i, y in enumerate((0, 512)):
        crop = np.s_[0:4, y : y + 96, 0:96]
        image = model_grid_image(raw.array[crop], MITO, stats, voxel_size)
        assert image.shape == (40, 88, 88)  # 50 nm sections x 4.6 nm pixels on the 5 nm grid
        target = model_grid_label((label[crop] > 0).astype(np.uint8), image.shape)
        volumes.append(TrainingVolume(f"r{i}", image, target, np.ones(image.shape, bool)))
    served = str(tmp_path / "served.pt")
    torch.manual_seed(0)
    save_weights(served, build_network(**MITO.network_args()), MITO.network_args(), {})
    spec = dataclasses.replace(MITO, patch_size=(16, 64, 64))  # a CPU-sized run of the same recipe
    run = fine_tune(spec, volumes, served, str(tmp_path / "c.pt"), original_baseline=lambda: 0.5, data_dir=None,
                    iterations=4, epochs=2, batch_size=1)  # fmt: skip
    assert run.held_out == [f"r{i} [held out: y 66:88]" for i in range(2)]
    assert run.trained_voxels == 2 * 40 * 66 * 88
    assert len(run.final.validation) and run.final.best_epoch in (1, 2)
    assert not run.gate.publish  # no reference data here: the original split cannot be checked
    assert run.gate.original_score is None and "AXONSEG_REFERENCE_DATA" in run.gate.reason
    with pytest.raises(TooFewLabels, match="too few"):
        fine_tune(MITO, [dataclasses.replace(volumes[0], mask=np.zeros_like(volumes[0].mask))], served,
                  str(tmp_path / "d.pt"), original_baseline=lambda: 0.5, data_dir=None)  # fmt: skip
