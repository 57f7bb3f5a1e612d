"""The datastore without a server: ingest into the chunked store, regions, labels per structure, SQL index."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from conftest import shared_file

from lib.configs.registry import SPECS
from lib.datastore import MicroscopyDatastore
from lib.db.engine import upgrade
from lib.db.store import Database
from lib.errors import InvalidRequest, NotFound, UploadTooLarge, VolumeError
from lib.transforms.intensity import IntensityStats, intensity_stats, normalize
from lib.transforms.io import Volume, read_volume, write_volume
from lib.volumes.formats import FORMATS
from lib.volumes.regions import Roi

EM_SPACING = (0.05, 0.004, 0.004)


@pytest.fixture(scope="module")
def em_crop() -> np.ndarray:
    """A real ssTEM crop (ISBI 2012)."""
    with h5py.File(shared_file("isbi2012_sstem.h5")) as f:
        return f["raw"][:10, :96, :128]


def make_datastore(tmp_path, **kwargs) -> MicroscopyDatastore:
    url = f"sqlite:///{tmp_path / 'axonseg.db'}"
    upgrade(url)
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    return MicroscopyDatastore(str(studies), str(tmp_path / "work"), Database(url), SPECS, **kwargs)


@pytest.fixture
def datastore(tmp_path):
    return make_datastore(tmp_path, region_size=(8, 64, 64))


def stored_files(ds: MicroscopyDatastore) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), ds.store.root)
        for d, _, files in os.walk(ds.store.root)
        for f in files
        if not f.endswith(".lock")
    }


@pytest.mark.parametrize("ext", list(FORMATS))
def test_every_format_is_ingested_and_served_as_nrrd_with_spacing(tmp_path, em_crop, ext):
    ds = make_datastore(tmp_path, region_size=None)
    source = write_volume(tmp_path / f"upload{ext}", Volume(em_crop, EM_SPACING))
    assert ds.add_image("stack", source, {}) == "stack"
    assert ds.list_images() == ["stack"]
    served = read_volume(ds.get_image_uri("stack"))
    np.testing.assert_array_equal(served.array, em_crop)
    assert served.spacing == pytest.approx(EM_SPACING)
    info = ds.get_image_info("stack")
    assert info["shape"] == [10, 96, 128] and info["name"] == "stack.nrrd"
    assert info["modality"] == "em" and "axon" not in info["structures"]
    # the store is OME-Zarr with the voxel size in its scale transforms and a pyramid
    stored = read_volume(ds.store.group_path("stack"), "0")
    np.testing.assert_array_equal(stored.array, em_crop)
    assert stored.spacing == pytest.approx(EM_SPACING)


def test_large_images_become_regions_served_as_crops_at_their_position(datastore, tmp_path, em_crop):
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    regions = datastore.list_images()
    assert len(regions) == 2 * 2 * 2  # 10x96x128 in 8x64x64 regions
    assert "big" not in regions
    covered = np.zeros(em_crop.shape, int)
    for region_id in regions:
        info = datastore.get_image_info(region_id)
        assert info["parent"] == "big"
        z, y, x = info["offset"]
        crop = read_volume(datastore.get_image_uri(region_id))
        np.testing.assert_array_equal(
            crop.array, em_crop[z : z + crop.shape[0], y : y + crop.shape[1], x : x + crop.shape[2]]
        )
        assert crop.origin == pytest.approx((z * 0.05, y * 0.004, x * 0.004))  # where it lies in the image
        covered[z : z + crop.shape[0], y : y + crop.shape[1], x : x + crop.shape[2]] += 1
    assert (covered == 1).all()  # every voxel in exactly one region
    assert not [p for p in os.listdir(datastore.views_path) if p.startswith("big.")]  # no whole-volume view


def test_a_region_label_touches_only_its_chunks_and_every_version_is_kept(datastore, tmp_path, em_crop):
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    region = "big_block_z0_y64_x0"
    shape = tuple(datastore.get_image_info(region)["shape"])
    before = stored_files(datastore)
    for value in (1, 2):
        label = write_volume(tmp_path / f"l{value}.nrrd", Volume(np.full(shape, value, np.uint8)))
        datastore.save_label(region, label, "final", {"model": "membrane", "client_id": f"c{value}"})
    written = {f for f in stored_files(datastore) - before if "/labels/membrane/0/" in f and not f.endswith(".zarray")}
    chunks = datastore.db.image("big").chunks
    expected = {f"big.ome.zarr/labels/membrane/0/{z}/{y}/{x}" for z in (0,) for y in (64 // chunks[1],) for x in (0,)}
    assert written == expected, written
    np.testing.assert_array_equal(datastore.read_label(region, "membrane"), 2)  # the latest is served
    versions = datastore.db.label_versions(region, "final", "membrane")
    assert [(v.version, v.client_id) for v in versions] == [(1, "c1"), (2, "c2")]
    np.testing.assert_array_equal(read_volume(versions[0].path).array, 1)  # older versions stay readable
    assert datastore.read_label("big_block_z0_y0_x0", "membrane") is None


def test_labels_are_split_by_structure_and_kept_to_compatible_images(datastore, tmp_path, em_crop):
    datastore.add_image("em", write_volume(tmp_path / "em.h5", Volume(em_crop[:6, :48, :48], EM_SPACING)), {})
    both = np.zeros((6, 48, 48), np.uint8)
    both[:, :10] = 1
    both[:, 20:30] = 2
    path = write_volume(tmp_path / "both.nrrd", Volume(both))
    segments = [{"name": "membrane", "idx": 1}, {"name": "Synapse", "idx": 2}]
    datastore.save_label("em", path, "final", {"label_info": segments, "client_id": "slicer"})
    np.testing.assert_array_equal(datastore.read_label("em", "membrane"), both == 1)
    np.testing.assert_array_equal(datastore.read_label("em", "synapse"), both == 2)
    assert datastore.training_regions("membrane") == ["em"] and datastore.training_regions("axon") == []
    with pytest.raises(InvalidRequest, match="can carry"):  # an axon label on an EM image
        datastore.save_label("em", path, "final", {"model": "axon"})
    with pytest.raises(InvalidRequest, match="say which structure"):
        datastore.save_label("em", path, "final", {})


def test_bad_inputs_store_nothing(datastore, tmp_path, em_crop):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(VolumeError):
        datastore.add_image("bad", str(bad), {})
    huge = tmp_path / "huge.h5"
    with h5py.File(huge, "w") as f:  # a tiny file that declares 4000^3 voxels
        f.create_dataset("raw", shape=(4000, 4000, 4000), dtype=np.uint8, chunks=(64, 64, 64))
    assert huge.stat().st_size < 10_000
    with pytest.raises(UploadTooLarge, match="Gvox"):
        make_datastore(tmp_path, max_image_voxels=10**9).add_image("huge", str(huge), {})
    for image_id in ("../x", "a/b", "..", ".hidden", "x" * 200):
        with pytest.raises(InvalidRequest):
            datastore.add_image(image_id, write_volume(tmp_path / "v.tif", Volume(em_crop)), {})
    assert datastore.list_images() == [] and stored_files(datastore) == set()
    assert [p for p in os.listdir(datastore.store.root) if not p.endswith(".lock")] == []


def test_label_shape_and_unknown_images(datastore, tmp_path, em_crop):
    datastore.add_image("small", write_volume(tmp_path / "s.tif", Volume(em_crop[:4, :32, :32], EM_SPACING)), {})
    wrong = write_volume(tmp_path / "l.nrrd", Volume(np.zeros((4, 32, 31), np.uint8)))
    with pytest.raises(VolumeError, match="does not match"):
        datastore.save_label("small", wrong, "final", {"model": "membrane"})
    with pytest.raises(NotFound):
        datastore.save_label("nope", wrong, "final", {"model": "membrane"})
    assert datastore.db.label_versions("small") == []


def test_server_fields_cannot_be_overwritten(datastore, tmp_path, em_crop):
    datastore.add_image("s", write_volume(tmp_path / "s.tif", Volume(em_crop[:4, :32, :32], EM_SPACING)),
                        {"parent": "other", "offset": [9, 9, 9], "note": "kept"})  # fmt: skip
    info = datastore.get_image_info("s")
    assert info["offset"] == [0, 0, 0] and "parent" not in info and info["note"] == "kept"
    for field in ("parent", "offset", "dataset", "shape"):
        with pytest.raises(InvalidRequest, match="set by the server"):
            datastore.update_image_info("s", {field: "x"})
    datastore.update_image_info("s", {"reviewed": True})
    assert datastore.get_image_info("s")["reviewed"] is True


def _worker_writes(args) -> int:
    """In another process (a worker): ``original`` labels and info updates on the shared database."""
    tmp, n = args
    from pathlib import Path

    ds = make_datastore(Path(tmp), region_size=(8, 64, 64))
    for i in range(n):
        region, image = ds.region_and_image("big_block_z0_y0_x0")
        ds.write_label(region, image, "membrane", "original", np.full(region.shape, i, np.uint32), {"client_id": "w"})
        ds.update_image_info("big_block_z0_y0_x64", {f"worker{i}": i})
    return n


def test_concurrent_saves_and_info_updates_from_processes_keep_every_write(datastore, tmp_path, em_crop):
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    regions = [r for r in datastore.list_images() if r != "big_block_z0_y0_x0"]
    n = 6
    labels = {}
    for region in regions:
        shape = tuple(datastore.get_image_info(region)["shape"])
        labels[region] = write_volume(tmp_path / f"{region}.nrrd", Volume(np.ones(shape, np.uint8)))
    with ProcessPoolExecutor(1) as other, ThreadPoolExecutor(6) as pool:
        worker = other.submit(_worker_writes, (str(tmp_path), n))
        saves = [pool.submit(datastore.save_label, r, labels[r], "final", {"model": "membrane", "client_id": f"t{i}"})
                 for i in range(n) for r in regions]  # fmt: skip
        infos = [pool.submit(datastore.update_image_info, "big_block_z0_y0_x64", {f"api{i}": i}) for i in range(n)]
        for future in saves + infos:
            future.result()
        assert worker.result() == n
    for region in regions:
        assert [v.version for v in datastore.db.label_versions(region, "final", "membrane")] == list(range(1, n + 1))
        np.testing.assert_array_equal(datastore.read_label(region, "membrane"), 1)
    assert len(datastore.db.label_versions("big_block_z0_y0_x0", "original", "membrane")) == n
    info = datastore.get_image_info("big_block_z0_y0_x64")
    assert all(info[f"api{i}"] == i and info[f"worker{i}"] == i for i in range(n))
    # the retrain trigger's count: each region once, per structure
    assert datastore.db.count_labelled_regions("membrane") == len(regions)
    assert datastore.db.count_labelled_regions("synapse") == 0


def test_final_label_hook_runs_once_per_structure(tmp_path, em_crop):
    calls = []
    ds = make_datastore(tmp_path, region_size=None, on_final_label=lambda *a: calls.append(a[:2]))
    ds.add_image("em", write_volume(tmp_path / "em.h5", Volume(em_crop[:4, :32, :32], EM_SPACING)), {})
    label = np.zeros((4, 32, 32), np.uint8)
    label[:, :5] = 1
    label[:, 9:] = 2
    path = write_volume(tmp_path / "l.nrrd", Volume(label))
    ds.save_label("em", path, "final", {"label_info": [{"name": "membrane", "idx": 1}, {"name": "synapse", "idx": 2}]})
    assert sorted(calls) == [("em", "membrane"), ("em", "synapse")]


def test_one_normalisation_per_image(datastore, tmp_path, em_crop):
    """A region read alone, with context or as part of the whole is normalised to the same values."""
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    spec = SPECS["membrane"]
    whole = normalize(em_crop, intensity_stats(em_crop), spec.percentiles, spec.intensity_ceiling)
    for context in ((0, 0, 0), (2, 16, 16)):
        data = datastore.read_region("big_block_z8_y64_x64", context)
        region = normalize(data.array, data.stats, spec.percentiles, spec.intensity_ceiling)[data.inner]
        np.testing.assert_array_equal(region, whole[8:, 64:, 64:])


def test_statistics_stored_by_an_older_server_are_recomputed_once(datastore, tmp_path, em_crop):
    """Images ingested before the median was stored (the axon model normalises by it) get it on first use."""
    datastore.add_image("old", write_volume(tmp_path / "old.h5", Volume(em_crop, EM_SPACING)), {})
    fresh = datastore.read_region("old").stats
    legacy = fresh.to_json()
    legacy["percentiles"] = {k: v for k, v in legacy["percentiles"].items() if k != "50"}
    datastore.db.set_image_intensity("old", legacy)
    with pytest.raises(ValueError, match="not stored"):
        IntensityStats.from_json(datastore.db.image("old").intensity).bounds((0.5, 50.0))
    assert datastore.read_region("old").stats == fresh
    assert datastore.db.image("old").intensity["percentiles"]["50"] == fresh.percentiles["50"]


def test_whole_image_views_are_bounded(tmp_path, em_crop):
    ds = make_datastore(tmp_path, region_size=(8, 64, 64), max_voxels_in_memory=50_000)
    ds.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    with pytest.raises(UploadTooLarge, match="regions"):
        ds.get_image_uri("big")
    assert read_volume(ds.get_image_uri("big_block_z0_y0_x0")).shape == (8, 64, 64)


def test_view_cache_stays_within_its_bound(tmp_path, em_crop):
    ds = make_datastore(tmp_path, region_size=(8, 64, 64), view_cache_mb=0.1)
    ds.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    for region in ds.list_images():
        ds.get_image_uri(region)
    sizes = [e.stat().st_size for e in os.scandir(ds.views_path)]
    assert 0 < sum(sizes) <= 0.1e6 + max(sizes)


def test_unlabelled_regions_per_structure(datastore, tmp_path, em_crop):
    datastore.add_image("em", write_volume(tmp_path / "em.h5", Volume(em_crop[:4, :32, :32], EM_SPACING)), {})
    light = np.asarray(em_crop[:4, :32, :32])
    datastore.add_image("ls", write_volume(tmp_path / "ls.tif", Volume(light, (2.0, 1.0, 1.0))), {})
    assert datastore.get_unlabeled_images(structure="axon") == ["ls"]
    assert datastore.get_unlabeled_images(structure="membrane") == ["em"]
    path = write_volume(tmp_path / "l.nrrd", Volume(np.ones((4, 32, 32), np.uint8)))
    datastore.save_label("em", path, "final", {"model": "membrane"})
    assert datastore.get_unlabeled_images(structure="membrane") == []
    assert datastore.get_unlabeled_images(structure="synapse") == ["em"]
    assert datastore.status()["completed"] == 1


def test_registered_volumes_are_read_in_place_and_must_stay_in_their_roots(tmp_path, em_crop):
    root = tmp_path / "volumes"
    root.mkdir()
    inside = write_volume(root / "brain.zarr", Volume(em_crop, EM_SPACING))
    outside = write_volume(tmp_path / "elsewhere.zarr", Volume(em_crop, EM_SPACING))
    ds = make_datastore(tmp_path, region_size=(8, 64, 64), volume_roots=[str(root)])
    ds.register_volume("brain", inside)
    assert not os.path.exists(os.path.join(ds.store.group_path("brain"), "0"))  # voxels stay where they are
    data = ds.read_region("brain_block_z8_y64_x64")
    np.testing.assert_array_equal(data.array, em_crop[8:, 64:, 64:])
    np.testing.assert_array_equal(normalize(data.array, data.stats, (0.5, 99.5)),
                                  normalize(em_crop, intensity_stats(em_crop), (0.5, 99.5))[8:, 64:, 64:])  # fmt: skip
    with pytest.raises(InvalidRequest, match="AXONSEG_VOLUME_ROOTS"):
        ds.register_volume("other", outside)
    os.symlink(outside, root / "link.zarr")
    with pytest.raises(InvalidRequest, match="AXONSEG_VOLUME_ROOTS"):
        ds.register_volume("other", str(root / "link.zarr"))


def test_remove_image_removes_store_views_and_history(datastore, tmp_path, em_crop):
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    region = datastore.list_images()[0]
    datastore.get_image_uri(region)
    shape = tuple(datastore.get_image_info(region)["shape"])
    datastore.save_label(region, write_volume(tmp_path / "l.nrrd", Volume(np.ones(shape, np.uint8))), "final",
                         {"model": "membrane"})  # fmt: skip
    datastore.remove_image(region)  # a region's id removes its image
    assert datastore.list_images() == [] and datastore.db.image("big") is None
    assert stored_files(datastore) == set() and os.listdir(datastore.views_path) == []


def test_thread_safety_of_label_array_creation(datastore, tmp_path, em_crop):
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    regions = datastore.list_images()
    barrier = threading.Barrier(len(regions))

    def save(region):
        region_row, image = datastore.region_and_image(region)
        barrier.wait()
        datastore.write_label(region_row, image, "synapse", "final", np.ones(region_row.shape, np.uint32), {})

    with ThreadPoolExecutor(len(regions)) as pool:
        list(pool.map(save, regions))
    whole = datastore.store.read_label("big", "synapse", Roi.whole(em_crop.shape))
    assert whole.min() == 1


def test_a_work_folder_from_the_json_datastore_upgrades_in_place(tmp_path, em_crop):
    """Schema 0002 + datastore_v2.json + labels/final + views -> chunked store, regions and label versions."""
    import json

    from alembic import command
    from sqlalchemy import text

    from lib.db.engine import alembic_config
    from lib.volumes.upgrade import upgrade_workdir

    url = f"sqlite:///{tmp_path / 'axonseg.db'}"
    command.upgrade(alembic_config(url), "0002")
    studies, views = tmp_path / "studies", tmp_path / "work" / "views"
    (studies / "labels" / "final").mkdir(parents=True)
    views.mkdir(parents=True)
    write_volume(studies / "stack.h5", Volume(em_crop, EM_SPACING))
    label = (em_crop > np.median(em_crop)).astype(np.uint8)
    write_volume(studies / "labels" / "final" / "stack.nrrd", Volume(label, EM_SPACING))
    write_volume(views / "stack.nrrd", Volume(em_crop, EM_SPACING))  # the old whole-volume view
    objects = {
        "stack": {
            "image": {"ext": ".h5", "info": {"dataset": "raw"}},
            "labels": {"final": {"ext": ".nrrd", "info": {"model": "membrane", "client_id": "old-annotator"}}},
        },
        "stack_block_z0_y0_x0": {"image": {"ext": ".nrrd", "info": {"parent": "stack", "offset": [0, 0, 0]}}},
    }
    (studies / "datastore_v2.json").write_text(json.dumps({"name": "old", "objects": objects}))
    db = Database(url)
    with db.engine.begin() as c:  # the rows the old datastore recorded
        for image in ("stack", "stack_block_z0_y0_x0"):
            c.execute(text("INSERT INTO images (id, original_path, added_at) VALUES (:i, :p, '2026-11-01')"),
                      {"i": image, "p": f"/old/{image}"})  # fmt: skip
        c.execute(text("INSERT INTO label_versions (image_id, tag, version, path, checksum, created_at) "
                       "VALUES ('stack', 'final', 1, '/old/v1.nrrd', :c, '2026-11-01')"), {"c": "0" * 64})  # fmt: skip
    upgrade(url)  # 0003
    ds = MicroscopyDatastore(str(studies), str(tmp_path / "work"), db, SPECS, region_size=(8, 64, 64))
    assert upgrade_workdir(ds, str(tmp_path / "work")) == ["stack"]
    assert ds.db.image("stack_block_z0_y0_x0") is None  # old block images are regions now
    regions = ds.list_images()
    assert len(regions) == 8 and all(r.startswith("stack_block_") for r in regions)
    assert ds.training_regions("membrane") == sorted(regions)
    for region in regions:
        info = ds.get_image_info(region)
        z, y, x = info["offset"]
        d, h, w = info["shape"]
        np.testing.assert_array_equal(ds.read_label(region, "membrane"), label[z : z + d, y : y + h, x : x + w])
    legacy = ds.db.label_versions("stack")
    assert [(v.path, v.region_id) for v in legacy] == [("/old/v1.nrrd", None)]  # history kept
    assert not (studies / "datastore_v2.json").exists() and (studies / "datastore_v2.json.migrated").exists()
    assert not (views / "stack.nrrd").exists()
    assert upgrade_workdir(ds, str(tmp_path / "work")) == []  # done once
    ds.add_found_files()  # the original file in the studies folder is not added a second time
    assert ds.list_images() == regions


def test_on_the_sample_datastore_each_structure_sees_only_its_own_labels(tmp_path):
    """The sample data mix light-sheet (TRAILMAP) and EM (FIB-SEM): axon retraining reads no EM label."""
    import shutil

    from conftest import SAMPLE_DATA

    from lib.activelearning.retrain import RetrainTrigger

    ds = make_datastore(tmp_path, region_size=(32, 64, 64))
    for f in SAMPLE_DATA.iterdir():
        if f.suffix in (".tif", ".h5", ".nrrd"):
            shutil.copy(f, tmp_path / "studies" / f.name)
    assert sorted(ds.add_found_files()) == ["gala_fibsem", "trailmap_chunk", "trailmap_original"]
    modalities = {i.id: i.modality for i in ds.db.images()}
    assert modalities == {"gala_fibsem": "em", "trailmap_chunk": "light-sheet", "trailmap_original": "light-sheet"}

    class Runs:  # what the trigger would queue
        def __init__(self):
            self.queued = []

        def submit(self, models, params, enqueue):
            self.queued.append(models[0])
            return ds.db.training_runs(limit=1)

    runs = Runs()
    trigger = RetrainTrigger(ds.db, runs, every=2, specs=SPECS)
    ds.on_final_label = trigger.label_saved
    for image, model in (("gala_fibsem", "mitochondria"), ("trailmap_chunk", "axon")):
        region = next(r for r in ds.list_images() if r.startswith(image))
        shape = tuple(ds.get_image_info(region)["shape"])
        label = write_volume(tmp_path / f"{region}.nrrd", Volume(np.ones(shape, np.uint8)))
        for _ in range(3):  # saved three times: still one labelled region
            ds.save_label(region, label, "final", {"label_info": [{"name": model, "idx": 1}]})
    assert all(r.startswith("trailmap_chunk") for r in ds.training_regions("axon"))
    assert all(r.startswith("gala_fibsem") for r in ds.training_regions("mitochondria"))
    assert len(ds.training_regions("axon")) == len(ds.training_regions("mitochondria")) == 1
    assert runs.queued == []  # one region per structure: below every=2
    assert ds.db.count_labelled_regions("axon") == 1 and ds.db.count_labelled_regions("mitochondria") == 1


def test_the_json_listing_gives_every_region_with_its_latest_label_of_any_structure(datastore, tmp_path, em_crop):
    datastore.add_image("big", write_volume(tmp_path / "big.h5", Volume(em_crop, EM_SPACING)), {})
    first, second = datastore.list_images()[:2]
    shape = tuple(datastore.get_image_info(first)["shape"])
    label = write_volume(tmp_path / "l.nrrd", Volume(np.ones(shape, np.uint8)))
    datastore.save_label(first, label, "final", {"model": "membrane"})
    datastore.save_label(first, label, "final", {"model": "synapse"})  # saved last: listed
    region, image = datastore.region_and_image(second)
    datastore.write_label(region, image, "mitochondria", "original", np.ones(region.shape, np.uint32), {})
    objects = datastore.json()["objects"]
    assert list(objects) == datastore.list_images()
    for region_id, obj in objects.items():
        assert obj["image"]["info"] == datastore.get_image_info(region_id)
        for tag, label_obj in obj["labels"].items():
            assert label_obj["info"] == datastore.get_label_info(region_id, tag)
    assert objects[first]["labels"]["final"]["info"]["structure"] == "synapse"
    assert (
        list(objects[second]["labels"]) == ["original"]
        and datastore.latest_structure(second, "original") == "mitochondria"
    )
