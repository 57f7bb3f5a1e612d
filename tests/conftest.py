"""Shared fixtures: the app library on sys.path, a real MONAI Label server, the real Slicer client."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
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


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests train and score on ../shared/data")
    return path


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


class Server:
    """A ``monailabel start_server`` subprocess on a private workdir, seeded with the sample data."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.studies = workdir / "datastore"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.studies.mkdir(parents=True, exist_ok=True)
        for f in SAMPLE_DATA.iterdir():
            if f.suffix in (".tif", ".h5", ".nrrd") and not (self.studies / f.name).exists():
                shutil.copy(f, self.studies / f.name)
        env = {**os.environ, "MONAILABEL_PYEXE": sys.executable}
        cmd = [
            str(Path(sys.executable).parent / "monailabel"), "start_server",
            "--app", str(APP_DIR), "--studies", str(self.studies),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--conf", "workdir", str(self.workdir), "--conf", "max_upload_mb", str(MAX_UPLOAD_MB),
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/info/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(1)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def alive(self) -> bool:
        return requests.get(f"{self.url}/info/", timeout=30).status_code == 200

    def files(self) -> set[str]:
        """Every file in the datastore, and any temporary file in the views cache (to check that a
        failed request left nothing behind; complete views are a cache and may appear any time)."""
        stored = {str(p.relative_to(self.workdir)) for p in self.studies.rglob("*") if p.is_file()}
        partial = {str(p) for p in (self.workdir / "views").rglob("*") if ".part" in p.name or ".tmp" in p.name}
        return stored | partial


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("axonseg-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    MONAILabelClient, _ = slicer_client_class()
    (server.workdir / "client").mkdir(exist_ok=True)
    return MONAILabelClient(server.url, tmpdir=str(server.workdir / "client"), client_id="pytest-annotator")
