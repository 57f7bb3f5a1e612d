"""Self-supervised pretraining: permutation choice, pretext batches, encoder transfer and freezing."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_file

from lib.configs.registry import SPECS
from lib.configs.spec import DataSource
from lib.errors import InvalidRequest
from lib.networks import build_network, load_weights, save_weights
from lib.trainers.data import load_source
from lib.trainers.encoder import (
    encoder_modules,
    load_encoder,
    read_encoder,
    save_encoder,
    set_encoder_trainable,
)
from lib.trainers.pretext import (
    Reconstruction,
    SlicePermutation,
    edge_map,
    hide_blocks,
    max_hamming_permutations,
)
from lib.trainers.pretrain import pretrain_encoder, random_crops
from lib.trainers.supervised import TrainingPlan, train_segmentation
from lib.transforms.intensity import normalize_percentiles

SPEC = SPECS["mitochondria"]


@pytest.fixture(scope="module")
def lucchi_raw() -> np.ndarray:
    """A normalised corner of the Lucchi++ raw volume (no labels used)."""
    with h5py.File(shared_file("lucchi_pp_train.h5")) as f:
        raw = f["raw"][:40, :200, :200]  # read as a crop: the whole file is 130 Mvox of gzip
    return normalize_percentiles(raw, SPEC.percentiles)


def _min_pairwise_distance(perms: np.ndarray) -> int:
    return min(int((a != b).sum()) for a, b in itertools.combinations(perms, 2))


def test_permutations_are_seeded_distinct_and_far_apart():
    perms = max_hamming_permutations(8, 10, seed=0)
    assert perms.shape == (10, 8)
    assert all(sorted(p) == list(range(8)) for p in perms)  # each row is a permutation of the 8 slices
    assert len({tuple(p) for p in perms}) == 10
    np.testing.assert_array_equal(perms, max_hamming_permutations(8, 10, seed=0))  # deterministic
    assert not np.array_equal(perms, max_hamming_permutations(8, 10, seed=1))  # the seed matters
    # 10 permutations of 8 cannot all differ in every position (at most 8 can), so 7 is the best possible.
    assert _min_pairwise_distance(perms) == 7
    rng = np.random.default_rng(0)
    random_sets = [_min_pairwise_distance(np.array([rng.permutation(8) for _ in range(10)])) for _ in range(20)]
    assert max(random_sets) < 7


def test_each_permutation_is_the_greedy_max_min_choice():
    """Checked by brute force over all 8! candidates: every step picks a farthest one."""
    perms = max_hamming_permutations(8, 10, seed=3)
    candidates = np.array(list(itertools.permutations(range(8))))
    for k in range(1, len(perms)):
        chosen = perms[:k]
        min_dist = np.min([(candidates != c).sum(1) for c in chosen], axis=0)
        min_dist[[int(np.flatnonzero((candidates == c).all(1))[0]) for c in chosen]] = -1
        assert int(min((perms[k] != c).sum() for c in chosen)) == min_dist.max()


def test_slice_permutation_batches_reorder_z_and_label_the_permutation():
    task = SlicePermutation(seed=0)
    rng = np.random.default_rng(1)
    crops = rng.random((6, 1, 8, 16, 16)).astype(np.float32)
    inputs, classes = task.make_batch(crops, rng)
    assert inputs.shape == crops.shape and classes.shape == (6,)
    for crop, permuted, k in zip(crops, inputs.numpy(), classes.numpy()):
        np.testing.assert_array_equal(permuted[0], crop[0][task.permutations[k]])
        inverse = np.argsort(task.permutations[k])
        np.testing.assert_array_equal(permuted[0][inverse], crop[0])  # nothing else changed
    assert task.crop_size(SPEC) == (8, *SPEC.patch_size[1:])


def test_hidden_blocks_and_edge_map():
    rng = np.random.default_rng(0)
    crops = np.ones((4, 1, 16, 32, 32), np.float32)
    hidden, mask = hide_blocks(crops, rng, 0.4, (2, 4, 4))
    assert mask.shape == crops.shape
    assert 0.25 < mask.mean() < 0.55
    assert (hidden[mask] == 0).all() and (hidden[~mask] == 1).all()
    step = np.zeros((16, 32, 32), np.float32)
    step[:, :, 16:] = 1.0
    edges = edge_map(step)
    assert edges[:, :, 15:17].mean() > 10 * edges[:, :, :8].mean()  # the edge is where the step is
    assert edge_map(np.full((8, 8, 8), 3.0, np.float32)).max() == 0  # no edges in a flat volume


def test_masked_reconstruction_loss_counts_only_hidden_voxels():
    task = Reconstruction("intensity")
    rng = np.random.default_rng(0)
    crops = rng.random((2, 1, 16, 32, 32)).astype(np.float32)
    hidden, (target, weight) = task.make_batch(crops, rng)
    perfect_where_hidden = torch.where(weight > 0, target, torch.zeros_like(target) + 5)
    assert float(task.loss(perfect_where_hidden, (target, weight))) == 0.0
    assert float(task.loss(hidden, (target, weight))) > 0.0


@pytest.mark.parametrize("task", [SlicePermutation(seed=0), Reconstruction("intensity"), Reconstruction("edges")])
def test_pretext_model_fits_a_fixed_batch(task, lucchi_raw):
    """Gradients reach the encoder and the loss falls on real EM crops (a smoke test of each task's wiring)."""
    raw = lucchi_raw
    rng = np.random.default_rng(0)
    crops = random_crops([raw], task.crop_size(SPEC), 2, rng)
    inputs, target = task.make_batch(crops, rng)
    torch.manual_seed(0)
    model = task.build(SPEC)
    before = [p.detach().clone() for p in encoder_modules(model.unet)["input_block"].parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = task.loss(model(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    after = list(encoder_modules(model.unet)["input_block"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_encoder_file_loads_into_a_fresh_unet_and_refuses_others(tmp_path):
    source = build_network(**SPEC.network_args())
    path = tmp_path / "encoder.pt"
    save_encoder(str(path), source, SPEC.network_args(), {"task": "masked"})
    torch.manual_seed(123)
    target = build_network(**SPEC.network_args())
    assert load_encoder(target, str(path), SPEC.network_args())["task"] == "masked"
    for part, module in encoder_modules(target).items():
        for (name, a), b in zip(module.state_dict().items(), encoder_modules(source)[part].state_dict().values()):
            assert torch.equal(a, b), f"{part}.{name}"
    # The decoder keeps its fresh weights.
    assert not torch.equal(target.output_block.conv.conv.weight, source.output_block.conv.conv.weight)
    with pytest.raises(InvalidRequest, match="pretrained for a U-Net"):
        read_encoder(str(path), SPECS["membrane"].network_args())  # anisotropic kernels: another geometry
    whole = tmp_path / "whole.pt"
    save_weights(str(whole), source, SPEC.network_args(), {})
    with pytest.raises(InvalidRequest, match="no encoder weights"):
        read_encoder(str(whole), SPEC.network_args())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidRequest, match="not a weights file"):
        read_encoder(str(tmp_path / "junk.pt"), SPEC.network_args())
    with pytest.raises(InvalidRequest, match="does not exist"):
        read_encoder(str(tmp_path / "missing.pt"), SPEC.network_args())


def test_frozen_encoder_does_not_move_while_the_decoder_learns(tmp_path):
    spec = SPECS["membrane"]
    folder = str(shared_file("isbi2012_sstem.h5").parent)
    crop = load_source(
        folder, DataSource("isbi2012_sstem.h5", "labels/membrane_isbi", region=((0, 8), (0, 192), (0, 192))), spec
    )
    pretrained = build_network(**spec.network_args())
    encoder = tmp_path / "encoder.pt"
    save_encoder(str(encoder), pretrained, spec.network_args(), {})
    out = tmp_path / "fine_tuned.pt"
    train_segmentation(
        spec, [crop], [], str(out),
        TrainingPlan(epochs=2, iterations_per_epoch=2, batch_size=1, learning_rate=1e-2,
                     pretrained_encoder=str(encoder), freeze_encoder_epochs=2),
    )  # fmt: skip
    tuned, _ = load_weights(str(out))
    for part, module in encoder_modules(tuned).items():
        for a, b in zip(module.state_dict().values(), encoder_modules(pretrained)[part].state_dict().values()):
            assert torch.equal(a, b), part
    assert not torch.equal(tuned.output_block.conv.conv.weight, pretrained.output_block.conv.conv.weight)
    # Unfrozen after the first epoch: now the encoder moves too.
    train_segmentation(
        spec, [crop], [], str(out),
        TrainingPlan(epochs=2, iterations_per_epoch=2, batch_size=1, learning_rate=1e-2,
                     pretrained_encoder=str(encoder), freeze_encoder_epochs=1),
    )  # fmt: skip
    tuned, _ = load_weights(str(out))
    moved = tuned.input_block.conv1.conv.weight
    assert not torch.equal(moved, pretrained.input_block.conv1.conv.weight)


def test_set_encoder_trainable_toggles_only_the_encoder():
    network = build_network(**SPEC.network_args())
    set_encoder_trainable(network, False)
    frozen = {id(p) for m in encoder_modules(network).values() for p in m.parameters()}
    assert all(not p.requires_grad for p in network.parameters() if id(p) in frozen)
    assert all(p.requires_grad for p in network.parameters() if id(p) not in frozen)
    set_encoder_trainable(network, True)
    assert all(p.requires_grad for p in network.parameters())


def test_pretrain_writes_an_encoder_with_its_provenance(tmp_path, lucchi_raw):
    raw = lucchi_raw
    history = []
    out = tmp_path / "encoder.pt"
    stats = pretrain_encoder(
        SPEC, SlicePermutation(seed=4), [raw], str(out), epochs=2, iterations_per_epoch=2, batch_size=2,
        learning_rate=1e-3, on_epoch=history.append,
    )  # fmt: skip
    assert [s.epoch for s in history] == [1, 2] and "accuracy" in stats.validation
    meta = read_encoder(str(out), SPEC.network_args())["meta"]
    assert meta["task"] == "slice_permutation" and meta["structure"] == "mitochondria"
    assert meta["permutations"] == max_hamming_permutations(seed=4).tolist()
    stopped = iter([False, True])
    with pytest.raises(Exception, match="stopped"):
        pretrain_encoder(
            SPEC, SlicePermutation(), [raw], str(tmp_path / "never.pt"), epochs=2, iterations_per_epoch=2,
            batch_size=2, learning_rate=1e-3, should_stop=lambda: next(stopped),
        )  # fmt: skip
    assert not (tmp_path / "never.pt").exists()


def test_pretrain_request_is_resolved_and_paths_stay_inside_the_allowed_folders(tmp_path):
    from lib.trainers.pretrain_task import PretrainTrainer

    allowed = tmp_path / "volumes"
    allowed.mkdir()
    for name in ("a.h5", "b.h5"):
        (allowed / name).write_bytes(b"")
    (tmp_path / "secret.h5").write_bytes(b"")
    (allowed / "link.h5").symlink_to(tmp_path / "secret.h5")
    trainer = PretrainTrainer(SPECS, str(tmp_path / "encoders"), str(tmp_path / "stats.json"), [str(allowed)])
    defaults = trainer.resolve({})
    assert defaults["structure"] == "axon" and defaults["task"] == "slice_permutation" and defaults["volumes"] == []
    both = trainer.resolve({"volumes": [str(allowed / "a.h5"), str(allowed / "b.h5")], "task": "edges"})
    assert both["volumes"] == [str(allowed / "a.h5"), str(allowed / "b.h5")] and both["task"] == "edges"
    assert trainer.resolve({"volumes": f"{allowed / 'a.h5'}, {allowed / 'b.h5'}"})["volumes"] == both["volumes"]
    for volumes in (str(allowed / ".." / "secret.h5"), str(allowed / "link.h5"), "/etc/passwd"):
        with pytest.raises(InvalidRequest, match="outside the folders"):
            trainer.resolve({"volumes": volumes})
    with pytest.raises(InvalidRequest, match=r"batch_size must be an integer in \[1, 256\]"):
        trainer.resolve({"batch_size": 0})
