"""docker-compose.yml: accepted by Compose, and every service runs something that exists in the project.

There is no Docker engine here, so nothing is started; `.ci/run` installs a Compose CLI if none is present.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
import yaml
from conftest import APP_DIR, ROOT

COMPOSE = ROOT / "docker-compose.yml"


def compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_cli_accepts_the_file():
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI on this machine (.ci/run installs one)")
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_health_checks_and_named_volumes(compose):
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "api", "worker-infer", "worker-train"}
    for name in ("redis", "postgres", "api"):
        assert services[name]["healthcheck"]["test"], name
    for worker in ("worker-infer", "worker-train"):
        assert services[worker]["depends_on"]["api"]["condition"] == "service_healthy"
        devices = services[worker]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1  # one GPU per replica
        assert "container_name" not in services[worker]  # --scale needs generated names
    assert {"datastore", "models", "database"} <= set(compose["volumes"])
    mounted = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert {"datastore", "models", "database"} <= mounted


def test_every_service_command_exists_in_the_project(compose):
    services = compose["services"]
    api = services["api"]["command"]
    assert api[:2] == ["monailabel", "start_server"] and shutil.which("monailabel", path=str(ROOT / ".venv" / "bin"))
    app_dir = api[api.index("--app") + 1]
    assert app_dir == "/app/apps/axonseg" and (APP_DIR / "main.py").exists()  # Dockerfile copies apps/ to /app
    for worker, queue in (("worker-infer", "infer"), ("worker-train", "train")):
        command = services[worker]["command"]
        assert command[:3] == ["python", "-m", "lib.jobs.worker"] and command[-1] == queue
        assert importlib.util.find_spec("lib.jobs.worker") is not None
    env = dict(line.split("=", 1) for line in (ROOT / "server_config" / "compose.env").read_text().splitlines()
               if line and not line.startswith("#"))  # fmt: skip
    assert env["REDIS_URL"].startswith("redis://redis:") and env["DATABASE_URL"].startswith("postgresql+psycopg://")
    # the publish gate's reference data is mounted where the train workers look for it
    mounts = {v.removesuffix(":ro").rsplit(":", 1)[1] for v in services["worker-train"]["volumes"]}
    assert env["AXONSEG_REFERENCE_DATA"] in mounts
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PYTHONPATH=/app/apps/axonseg" in dockerfile and "COPY apps ./apps" in dockerfile
