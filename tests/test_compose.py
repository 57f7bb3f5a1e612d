"""docker-compose.yml: accepted by Compose, every service runs something that exists in the project, and
the stack cannot start without its secrets or with Redis / PostgreSQL open.

There is no Docker engine here, so nothing is started: `compose config` checks the file where a Compose CLI is
installed (`.ci/run` installs one), tests/compose_config.py and the Compose specification's schema where not.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import compose_config
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


SECRETS = {"REDIS_PASSWORD": "r3dis0f7est", "POSTGRES_PASSWORD": "pg0f7est", "AXONSEG_ADMIN_PASSWORD": "adm1n0f7est"}


@pytest.fixture
def render(tmp_path):
    """`compose config` with exactly ``secrets``: from a temporary --env-file (never the repo's .env, which
    may hold a lab's real ones), the same names removed from the environment compose inherits. Without a
    Compose CLI, the file is interpolated here and validated against the Compose specification's schema."""
    cli = compose_cli()

    def run(secrets: dict[str, str]) -> subprocess.CompletedProcess:
        env_file = tmp_path / "test.env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in secrets.items()))
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        if cli is None:
            return compose_config.render(COMPOSE, {**compose_config.read_env_file(env_file), **env})
        command = [*cli, "--env-file", str(env_file), "-f", str(COMPOSE), "config"]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)

    return run


def test_compose_cli_accepts_the_file(render):
    result = render(SECRETS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_start_without_each_secret(render, missing, how):
    secrets = {k: v for k, v in SECRETS.items() if k != missing} | ({missing: ""} if how == "empty" else {})
    result = render(secrets)
    assert result.returncode != 0
    assert missing in result.stderr and ".env.example" in result.stderr, result.stderr


def test_env_example_as_committed_is_refused(render):
    """Copying .env.example without filling it in must not start a stack with empty or placeholder passwords."""
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    assert set(example) == set(SECRETS) and not any(example.values())
    assert render(example).returncode != 0


def test_rendered_config_carries_the_secrets_and_publishes_no_backend(render):
    result = render(SECRETS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    redis, postgres = services["redis"], services["postgres"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]  # the health check authenticates
    assert "PONG" in " ".join(redis["healthcheck"]["test"])  # a NOAUTH reply is not healthy
    assert postgres["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert "ports" not in redis and "ports" not in postgres
    for name in ("api", "worker-infer", "worker-train"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name
        database = f"postgresql+psycopg://axonseg:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/axonseg"
        assert env["DATABASE_URL"] == database, name
    assert services["api"]["environment"]["AXONSEG_AUTH"] == "on"
    assert services["api"]["environment"]["AXONSEG_ADMIN_PASSWORD"] == SECRETS["AXONSEG_ADMIN_PASSWORD"]
    for worker in ("worker-infer", "worker-train"):
        assert "AXONSEG_ADMIN_PASSWORD" not in services[worker]["environment"]  # only the API needs it
    assert "axonseg:axonseg@" not in result.stdout and "POSTGRES_PASSWORD: axonseg" not in result.stdout


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_health_checks_and_named_volumes(compose):
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "api", "worker-infer", "worker-train", "orthanc"}
    optional = {name for name, service in services.items() if service.get("profiles")}
    assert optional == {"orthanc"}  # started only with --profile orthanc; the DICOMweb bridge is the default
    assert "ports" not in services["orthanc"]
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
    urls = services["worker-train"]["environment"]
    assert urls["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?") and urls["REDIS_URL"].endswith("@redis:6379/0")
    assert urls["DATABASE_URL"].startswith("postgresql+psycopg://axonseg:${POSTGRES_PASSWORD:?")
    # the publish gate's reference data is mounted where the train workers look for it
    mounts = {v.removesuffix(":ro").rsplit(":", 1)[1] for v in services["worker-train"]["volumes"]}
    assert env["AXONSEG_REFERENCE_DATA"] in mounts
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PYTHONPATH=/app/apps/axonseg" in dockerfile and "COPY apps ./apps" in dockerfile


def test_no_password_in_committed_files(compose):
    """Every secret comes from `${VAR:?}` (so from .env or the shell); .env itself is git-ignored."""
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert compose["services"]["api"]["environment"]["AXONSEG_ADMIN_PASSWORD"].startswith("${AXONSEG_ADMIN_PASSWORD:?")
    compose_env = (ROOT / "server_config" / "compose.env").read_text()
    assert "PASSWORD" not in compose_env and "@" not in compose_env  # env_file values are not interpolated
    assert "axonseg:axonseg@" not in COMPOSE.read_text()
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
