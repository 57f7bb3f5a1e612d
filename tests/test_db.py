"""The database layer on real PostgreSQL (a schema of its own) and on the embedded SQLite file."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import postgres_schema, record_test_image
from sqlalchemy import inspect

from lib.db.engine import upgrade
from lib.db.store import Database

TABLES = {
    "images",
    "regions",
    "label_versions",
    "leases",
    "scores",
    "training_runs",
    "model_versions",
    "encoder_versions",
    "volume_jobs",
    "volume_blocks",
    "alembic_version",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, tmp_path):
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema()) if request.param == "postgresql" else f"sqlite:///{tmp_path}/a.db"
        upgrade(url)
        database = Database(url)
        yield database
        database.dispose()


def test_migrations_create_every_table_and_are_idempotent(db):
    upgrade(db.url)  # a second run changes nothing and does not fail
    assert TABLES <= set(inspect(db.engine).get_table_names())


def test_parallel_saves_on_one_image_keep_every_version(db):
    record_test_image(db, "a")
    region = db.region("a")
    n = 24
    with ThreadPoolExecutor(8) as pool:
        rows = list(
            pool.map(lambda i: db.add_label_version(region, "axon", "final", f"/v/{i}", f"{i:064d}", f"c{i}"), range(n))
        )
    assert sorted(r.version for r in rows) == list(range(1, n + 1))
    versions = db.label_versions("a")
    assert [v.version for v in versions] == list(range(1, n + 1))
    assert {v.client_id for v in versions} == {f"c{i}" for i in range(n)}
    assert db.label_version("a", "axon", "final").version == n  # latest by default
    assert db.label_version("a", "axon", "final", 3).path == next(r.path for r in rows if r.version == 3)
    db.add_label_version(region, "mitochondria", "final", "/v/m", "0" * 64)  # another structure counts apart
    assert db.label_version("a", "mitochondria", "final").version == 1
    assert db.count_labelled_regions("axon") == 1 and sorted(db.labelled_regions()["a"]) == ["axon", "mitochondria"]


def test_parallel_saves_on_different_images(db):
    for i in range(6):
        record_test_image(db, f"img{i}")
    regions = [db.region(f"img{i}") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: db.add_label_version(regions[i % 6], "axon", "final", "/p", "0" * 64), range(18)))
    assert all([v.version for v in db.label_versions(f"img{i}")] == [1, 2, 3] for i in range(6))


def test_lease_is_exclusive_until_it_expires(db):
    record_test_image(db, "a")
    assert db.acquire_lease("a", "alice", 1.0)
    assert not db.acquire_lease("a", "bob", 1.0)
    assert db.leased_by_others("bob") == {"a"} and db.leased_by_others("alice") == set()
    assert db.acquire_lease("a", "alice", 1.0)  # renewing one's own lease
    time.sleep(1.2)
    assert db.leased_by_others("bob") == set()
    assert db.acquire_lease("a", "bob", 60)
    assert not db.acquire_lease("a", "alice", 60)


def test_lease_cap_releases_the_holders_oldest_leases(db):
    for image in "abcd":
        record_test_image(db, image)
    for image in "abc":
        assert db.acquire_lease(image, "alice", 60, max_leases=2)
        time.sleep(0.01)  # distinct acquisition times
    assert db.acquire_lease("d", "bob", 60, max_leases=2)
    held = {lease.image_id: lease.client_id for lease in db.leases()}
    assert held == {"b": "alice", "c": "alice", "d": "bob"}  # alice's oldest went; bob's own cap is apart
    assert db.acquire_lease("b", "alice", 60, max_leases=2)  # renewing keeps the other one
    assert {i for i, c in ((lease.image_id, lease.client_id) for lease in db.leases()) if c == "alice"} == {"b", "c"}


def test_concurrent_claims_on_one_image_have_one_winner(db):
    record_test_image(db, "a")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: db.acquire_lease("a", f"c{i}", 60), range(16)))
    assert sum(won) == 1


def test_model_versions_one_active_and_training_runs_record_epochs(db, tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")
    v1 = db.register_model_version("axon", str(first), "shipped")
    assert db.register_model_version("axon", str(first), "shipped").id == v1.id  # same checksum: same version
    v2 = db.register_model_version("axon", str(second), "trained", metrics={"best_metric": 0.8})
    assert db.active_model_version("axon").id == v2.id
    assert [v.active for v in db.model_versions("axon")] == [False, True]
    db.add_training_run("job-1", "axon", {"max_epochs": 2})
    db.add_training_epoch("job-1", {"epoch": 1, "loss": 0.5})
    db.add_training_epoch("job-1", {"epoch": 2, "loss": 0.4})
    db.update_training_run("job-1", status="DONE", model_version_id=v2.id)
    run = db.training_run("job-1")
    assert [e["epoch"] for e in run.epochs] == [1, 2] and run.status == "DONE" and run.model_version_id == v2.id
    record_test_image(db, "img")
    db.record_score("img", "entropy", 0.25, v2.id)
    db.record_score("img", "entropy", 0.5, v2.id)  # re-scoring replaces the value for that model version
    assert db.scores("entropy", v2.id) == {"img": 0.5}


def test_encoder_versions_are_recorded_once_per_file_and_linked_to_their_run(db, tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"encoder a")
    second.write_bytes(b"encoder b")
    a = db.register_encoder_version("axon", "light-sheet", "slice_permutation", str(first), {"accuracy": 0.9})
    again = db.register_encoder_version("axon", "light-sheet", "slice_permutation", str(first))
    b = db.register_encoder_version("mitochondria", "EM", "edges", str(second), {"mse": 0.1}, {"volumes": ["x.h5"]})
    assert again.id == a.id  # the same file is one version
    assert [v.id for v in db.encoder_versions()] == [a.id, b.id]
    assert [v.id for v in db.encoder_versions("mitochondria")] == [b.id]
    assert db.encoder_version(b.id).params == {"volumes": ["x.h5"]} and db.encoder_version(999) is None
    db.add_training_run("job-ssl", "ssl_pretrain", {"task": "edges"})
    db.update_training_run("job-ssl", status="DONE", encoder_version_id=b.id)
    assert db.training_run("job-ssl").encoder_version_id == b.id


def test_image_info_updates_from_threads_are_all_kept(db):
    record_test_image(db, "a")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: db.update_image_info("a", {f"k{i}": i}), range(24)))
        list(pool.map(lambda i: db.update_region_info("a", {f"r{i}": i}), range(24)))
    assert db.image("a").info == {f"k{i}": i for i in range(24)}
    assert db.region("a").info == {f"r{i}": i for i in range(24)}


def test_removing_an_image_removes_its_regions_and_what_refers_to_them(db):
    record_test_image(db, "a")
    db.acquire_lease("a", "alice", 60)
    db.record_score("a", "tta", 0.5, None)
    db.add_label_version(db.region("a"), "axon", "final", "/v", "0" * 64)
    db.remove_image("a")
    assert db.region("a") is None and db.leases() == [] and db.scores("tta") == {} and db.label_versions("a") == []


def test_migrations_match_the_models(db):
    """models.py and the migrations describe the same schema (a model change needs a migration)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from lib.db.models import Base

    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migration_0003_keeps_label_history_and_new_versions_follow_it(backend, tmp_path):
    from alembic import command
    from sqlalchemy import text

    from lib.db.engine import alembic_config

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema()) if backend == "postgresql" else f"sqlite:///{tmp_path}/m.db"
        command.upgrade(alembic_config(url), "0002")
        db = Database(url)
        with db.engine.begin() as c:
            c.execute(text("INSERT INTO images (id, original_path, added_at) VALUES ('a', '/a', '2026-11-01')"))
            for version in (1, 2):
                c.execute(
                    text("INSERT INTO label_versions (image_id, tag, version, path, checksum, created_at) "
                         "VALUES ('a', 'final', :v, '/old', :c, '2026-11-01')"),
                    {"v": version, "c": "0" * 64},
                )  # fmt: skip
        upgrade(url)
        assert [(v.version, v.region_id) for v in db.label_versions("a")] == [(1, None), (2, None)]
        from lib.db.models import Region

        with db.session() as s, s.begin():
            s.add(Region(id="a", image_id="a", offset=[0, 0, 0], shape=[1, 1, 1], whole=True))
        row = db.add_label_version(db.region("a"), "axon", "final", "/new", "1" * 64)  # a fresh id, no collision
        assert row.version == 1 and row.id > 2
        db.dispose()


def test_the_database_says_not_found_and_already_exists_as_client_errors(db):
    from lib import errors
    from lib.db.models import Region

    record_test_image(db, "a")
    with pytest.raises(errors.InvalidRequest, match="image 'a' already exists"):
        record_test_image(db, "a")
    for update in (db.update_image_info, db.update_region_info, db.set_image_intensity):
        with pytest.raises(errors.NotFound, match="'gone' is not recorded") as raised:
            update("gone", {})
        assert raised.value.status_code == 404 and not isinstance(raised.value, KeyError)
    ghost = Region(id="ghost", image_id="a", offset=[0, 0, 0], shape=[1, 1, 1], whole=True)
    with pytest.raises(errors.NotFound, match="region 'ghost'"):
        db.add_label_version(ghost, "axon", "final", "/v", "0" * 64)
