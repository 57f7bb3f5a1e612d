"""One model across microscopes: planar resampling, per-microscope splits and leave-one-out recipes, balanced
sampling, labelled masks, domain randomisation and resumable training, on small crops of the real volumes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import shared_file

from lib.configs.registry import CANDIDATES, SPECS
from lib.configs.spec import DataSource
from lib.figures import leave_one_out_table
from lib.infers.predict import resampling_zoom
from lib.protocol import artifact_facts
from lib.trainers.data import TrainingVolume, load_source, mixing_weights
from lib.trainers.report import LOMO_DIR, leave_one_out
from lib.trainers.supervised import TrainingPlan, TrainingStopped, train_segmentation
from lib.transforms.augment import RandInPlaneBlur, RandInPlaneLowResolution, RandInvert

MITO = CANDIDATES["mitochondria-em"]  # the recipe across four EM microscopes


def data_dir() -> str:
    return str(shared_file("hela_sbem_mito.h5").parent)


def test_a_planar_model_resamples_in_plane_only():
    assert MITO.planar and CANDIDATES["membrane-em"].planar and not SPECS["membrane"].planar
    assert resampling_zoom(MITO, (5.0, 5.0, 5.0)) == (1.0, 0.5, 0.5)  # FIB-SEM: every 5 nm section kept
    assert resampling_zoom(MITO, (50.0, 4.6, 4.6)) == pytest.approx((1.0, 0.46, 0.46))
    assert resampling_zoom(MITO, (50.0, 10.0, 10.0)) is None  # SBEM: the model's own pixel
    assert resampling_zoom(SPECS["synapse"], (5.0, 5.0, 5.0)) == pytest.approx((0.1, 5 / 4.6, 5 / 4.6))  # 3D: z too


def test_every_microscope_has_its_own_train_select_and_test_slabs():
    recipe = MITO.recipe
    assert len(recipe.microscopes) == 4
    for split in (recipe.train, recipe.select, recipe.test):
        assert sorted({s.microscope for s in split}) == sorted(recipe.microscopes)
    for microscope in recipe.microscopes:
        regions = [s.region for split in (recipe.train, recipe.select, recipe.test) for s in split
                   if s.microscope == microscope]  # fmt: skip
        axis = next(i for i in range(3) if regions[0][i] != (None, None))
        bounds = [r[axis] for r in regions]
        assert bounds[0][1] == bounds[1][0] and bounds[1][1] == bounds[2][0], f"{microscope}: slabs must not overlap"


def test_leave_one_out_trains_and_selects_without_the_microscope_and_tests_only_on_it():
    held_out = MITO.recipe.leave_out("sbem-hela")
    assert all(s.microscope != "sbem-hela" for s in held_out.train + held_out.select)
    assert [s.microscope for s in held_out.test] == ["sbem-hela"]
    assert held_out.cross == () and held_out.unlabelled == ()
    with pytest.raises(ValueError, match="no training source is from microscope 'tem-of-mars'"):
        MITO.recipe.leave_out("tem-of-mars")


def test_each_microscope_gets_an_equal_share_of_patches():
    def volume(microscope: str, voxels: int) -> TrainingVolume:
        return TrainingVolume(microscope, np.zeros(voxels), np.zeros(voxels), np.ones(voxels, bool), microscope)

    weights = mixing_weights([volume("fib", 1000), volume("fib", 3000), volume("sbem", 10)], [], 0.0)
    assert weights == pytest.approx([0.125, 0.375, 0.5])
    replayed = mixing_weights([volume("lab", 5)], [volume("fib", 100), volume("sbem", 1)], 0.25)
    assert replayed == pytest.approx([0.75, 0.125, 0.125])


def test_sources_load_on_the_model_grid_and_train_only_inside_their_mask():
    isbi = load_source(data_dir(), DataSource("isbi2012_sstem.h5", "labels/mito", region=((0, 2), (0, 100), (0, 100))),
                       MITO)  # fmt: skip
    assert isbi.image.shape == (2, 40, 40)  # 4 nm pixels onto 10 nm ones; sections kept
    hela = next(s for s in MITO.recipe.test if s.microscope == "sbem-hela")
    volume = load_source(data_dir(), hela, MITO)
    assert volume.image.shape == (1, 2000, 2000)
    assert 0.05 < volume.mask.mean() < 0.6  # the labelled central cell only
    assert volume.target[volume.mask].any() and not volume.target[~volume.mask].any()


def test_domain_randomisation_keeps_sections_apart_and_inverts_contrast():
    image = np.zeros((2, 32, 32), np.float32)
    image[1] = np.random.default_rng(0).random((32, 32))
    for transform in (RandInPlaneBlur(prob=1.0), RandInPlaneLowResolution(prob=1.0, zoom_range=(0.5, 0.5))):
        out = transform(image)
        assert out.shape == image.shape and not out[0].any()  # nothing bleeds into the blank section
        assert out[1].std() < image[1].std()
    assert np.allclose(RandInvert(prob=1.0, ceiling=1.0)(image), 1.0 - image)


def test_a_resumed_run_ends_bit_for_bit_where_an_unbroken_one_does(tmp_path):
    spec = replace(MITO, filters=(4, 8, 8, 8, 8), patch_size=(2, 64, 64))
    source = DataSource("isbi2012_sstem.h5", "labels/mito", region=((0, 4), (0, 256), (0, 256)))
    volume = load_source(data_dir(), source, spec)

    def plan(name: str) -> TrainingPlan:
        return TrainingPlan(epochs=2, iterations_per_epoch=2, batch_size=1, learning_rate=1e-3,
                            checkpoint=str(tmp_path / f"{name}.resume.pt"))  # fmt: skip

    def weights(name: str) -> dict:
        return torch.load(tmp_path / f"{name}.pt", weights_only=True)["state_dict"]

    train_segmentation(spec, [volume], [], str(tmp_path / "unbroken.pt"), plan("unbroken"))
    polls = iter(range(100))
    with pytest.raises(TrainingStopped):  # killed in epoch 2: its state after epoch 1 stays
        train_segmentation(spec, [volume], [], str(tmp_path / "resumed.pt"), plan("resumed"),
                           should_stop=lambda: next(polls) >= 2)  # fmt: skip
    history: list = []
    steps: list[int] = []
    train_segmentation(spec, [volume], [], str(tmp_path / "resumed.pt"), plan("resumed"), on_epoch=history.append,
                       should_stop=lambda: bool(steps.append(1)))  # fmt: skip
    assert len(steps) == 2  # only epoch 2 was trained again
    assert [s.epoch for s in history] == [1, 2]  # the restored epoch is reported, then the new one
    unbroken, resumed = weights("unbroken"), weights("resumed")
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)


def test_the_card_sets_each_microscope_beside_the_run_that_never_saw_it(tmp_path):
    def row(file: str, region: str, microscope: str, iou: float) -> dict:
        metrics = {"foreground_iou": iou, "f1": iou, "precision": iou, "recall": iou}
        return {"split": "test", "file": file, "region": region, "microscope": microscope, "metrics": metrics}

    shipped = {"rows": [row("hela_sbem_mito.h5", "4:5,:,:", "sbem-hela", 0.8),
                        row("lucchi_pp_train.h5", "135:165,:,:", "fibsem-mouse-ca1", 0.9)]}  # fmt: skip
    (tmp_path / LOMO_DIR).mkdir()
    held_out = {"rows": [row("hela_sbem_mito.h5", "4:5,:,:", "sbem-hela", 0.3)]}
    (tmp_path / LOMO_DIR / "mitochondria-em-without-sbem-hela.protocol.json").write_text(json.dumps(held_out))
    rows = leave_one_out(MITO, shipped, str(tmp_path), "mitochondria-em")
    assert [r["microscope"] for r in rows] == list(MITO.recipe.microscopes)
    lines = leave_one_out_table(MITO, rows)
    hela = next(line for line in lines if line.startswith("| sbem-hela"))
    lucchi = next(line for line in lines if line.startswith("| fibsem-mouse-ca1"))
    assert "0.800 / 0.300" in hela and "0.900 / not run" in lucchi


def test_artifact_voxels_marked_as_the_structure_are_counted():
    label = np.array([[[1, 2, 3, 3, 3, 0]]])
    prediction = np.array([[[0, 1, 1, 0, 0, 1]]])
    facts = artifact_facts(SPECS["axon"], prediction, label)
    assert facts == {"artifact_voxels": 3, "artifact_marked_fraction": pytest.approx(1 / 3)}
    assert artifact_facts(MITO, prediction, label) == {}  # no artifact label in its recipe
