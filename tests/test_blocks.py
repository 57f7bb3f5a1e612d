"""Large volumes as ROI blocks: tiling, block images with their placement, labels written back."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lib.activelearning.blocks import Block, grid, needs_blocks, paste
from lib.datastore import MicroscopyDatastore
from lib.transforms.io import Volume, read_volume, write_volume

SHAPE, BLOCK = (20, 40, 36), (10, 20, 20)


def test_grid_tiles_every_voxel_exactly_once():
    blocks = grid("v", SHAPE, BLOCK)
    assert len(blocks) == 2 * 2 * 2
    cover = np.zeros(SHAPE, int)
    for block in blocks:
        cover[block.region] += 1
    assert (cover == 1).all()
    assert blocks[-1].offset == (10, 20, 20) and blocks[-1].shape == (10, 20, 16)  # edge block cut short
    assert needs_blocks(SHAPE, BLOCK) and not needs_blocks((10, 20, 30), BLOCK)  # 1.5 blocks: keep whole
    with pytest.raises(ValueError, match="does not match block"):
        paste(np.zeros(SHAPE), np.ones((2, 2, 2)), blocks[0])


@pytest.fixture
def split(tmp_path):
    rng = np.random.default_rng(0)
    volume = Volume(rng.integers(0, 255, SHAPE).astype(np.uint8), spacing=(2.0, 0.5, 0.25), origin=(100.0, 10.0, 5.0))
    path = write_volume(str(tmp_path / "big.nrrd"), volume)  # NRRD keeps the origin
    ds = MicroscopyDatastore(str(tmp_path / "studies"), str(tmp_path / "views"), block_size=BLOCK)
    ds.add_image("big", path, {})
    return ds, volume, tmp_path


def test_a_large_volume_is_served_as_blocks_with_their_placement(split):
    ds, volume, _ = split
    blocks = [b.id for b in grid("big", SHAPE, BLOCK)]
    assert ds.get_unlabeled_images() == blocks  # the parent itself is never handed out
    block = ds.block_of("big_block_z10_y20_x0")
    assert block == Block("big", (10, 20, 0), (10, 20, 20))
    served = read_volume(ds.get_image_uri(block.id))
    assert np.array_equal(served.array, volume.array[block.region])
    assert served.spacing == pytest.approx(volume.spacing)
    parent = read_volume(ds.get_image_uri("big"))
    assert parent.origin == pytest.approx(volume.origin)
    expected_origin = np.array(volume.origin) + np.array(block.offset) * np.array(volume.spacing)
    assert served.origin == pytest.approx(tuple(expected_origin))
    assert ds.block_of("big") is None


def test_block_labels_land_in_the_parent_label_and_train_as_their_own_images(split):
    ds, volume, tmp_path = split
    parent = read_volume(ds.get_image_uri("big"))
    labels = {}
    blocks = grid("big", SHAPE, BLOCK)

    def save(block: Block) -> None:
        served = read_volume(ds.get_image_uri(block.id))
        label = (served.array > 128).astype(np.uint8)
        labels[block.id] = label
        path = write_volume(str(tmp_path / f"{block.id}.nrrd"), dataclasses.replace(served, array=label))
        ds.save_label(block.id, path, "final", {"client_id": block.id})

    with ThreadPoolExecutor(4) as pool:  # annotators saving blocks of one volume at once
        list(pool.map(save, blocks[:4]))
    assembled = read_volume(ds.get_label_uri("big", "final")).array
    assert assembled.shape == parent.shape
    for block in blocks[:4]:
        assert np.array_equal(assembled[block.region], labels[block.id])
    for block in blocks[4:]:
        assert not assembled[block.region].any()  # not labelled yet
    trained_on = sorted(item["image"].rsplit("/", 1)[-1].split(".")[0] for item in ds.datalist())
    assert trained_on == sorted(b.id for b in blocks[:4])  # the partial parent label is not training data
    assert ds.get_unlabeled_images() == [b.id for b in blocks[4:]]
