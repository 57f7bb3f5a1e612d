"""The server's settings: MONAI Label's ``--conf key value`` pairs, the environment and the defaults, read in one
place into one typed object (:meth:`Settings.read`); the API server reads them nowhere else. (A worker takes its
own from its command line and environment: ``lib/jobs/worker.py``.)

Conf keys (``--conf key value``):
    workdir          the volume store, retrained weights, training stats, region views, label versions, uploads
                     (default: <studies>/.axonseg); workers must see the same folder
    dataset          default dataset path inside HDF5/Zarr/N5 uploads (default: found automatically)
    max_upload_mb    largest accepted request body (default 2048)
    infer_timeout_s  /infer answers 504 after this long (default 300)
    lease_s          how long next-sample keeps an image for one annotator (default 1800)
    active_learning_model   the model the score-ranked strategies use unless a request names one
                     (default: the first model, axon)
    retrain_after_labels    queue a fine-tuning run of a structure after this many newly labelled regions of it
                     (default 3; 0 turns it off)
    retrain_params   the options of those runs, as trainer option pairs (default: the trainer's own),
                     e.g. max_epochs=2,iterations=40
    auto_scoring     queue scoring jobs at start-up for images without a fresh score (default false: next-sample
                     queues them when a score-ranked strategy first needs them)
    region_size      tile volumes larger than this into regions that annotators are handed one at a time, "z,y,x"
                     voxels, rounded up to whole chunks (default 64,256,256; 0 turns it off; ``block_size`` is the
                     old name)
    max_voxels_in_memory   the most voxels one request may make a process hold (a whole-image view, a NRRD/NIfTI
                     file); above it the request is refused with 413 (default 536870912)
    max_image_voxels the largest image accepted (default 274877906944 = 256 Gvox)
    view_cache_mb    bound on the NRRD crops of regions kept for downloads (default 2048)
    auth             on: built-in users and roles (docs/security.md); default off, or AXONSEG_AUTH (if both are set
                     they must agree, else the server does not start); MONAI Label's Keycloak settings
                     (MONAI_LABEL_AUTH_ENABLE) select oidc
    token_ttl_h      lifetime of an access token (default 12)
    max_leases_per_user    regions one user (or client_id, auth off) may hold at once; asking for another sample
                     releases the oldest (default 4)
    upload_quota_gb  what one user's images still in the datastore may take to upload (default 500)
    min_free_gb      uploads are refused when they would leave less free disk in the workdir (default 5)
    dicomweb_url     a lab's DICOMweb server that OHIF reads through /proxy/dicom (or AXONSEG_DICOMWEB_URL)

Environment: REDIS_URL (the job queue, required; workers use the same one), DATABASE_URL (SQLAlchemy URL; default
a SQLite file ``<workdir>/axonseg.db``), AXONSEG_AUTH, AXONSEG_ADMIN_PASSWORD (creates the user ``admin`` on the
first start with auth on), AXONSEG_AUTH_SECRET (signs tokens; default a random secret kept in
``<workdir>/auth_secret``), AXONSEG_VOLUME_ROOTS (folders, ``os.pathsep``-separated, whose Zarr/N5 volumes may be
registered in place or pretrained on), AXONSEG_DICOMWEB_URL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .datastore import DEFAULT_MAX_IMAGE_VOXELS, DEFAULT_MAX_VOXELS_IN_MEMORY
from .db.engine import database_url
from .identifiers import log_safe
from .volumes.roots import volume_roots

_ON, _OFF = ("on", "true", "1", "yes"), ("off", "false", "0", "no")


class SettingsError(ValueError):
    """A conf value or environment variable the server cannot start with; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with. Sizes are bytes and voxels, times seconds."""

    studies: str
    workdir: str
    model_dir: str
    redis_url: str
    database_url: str
    dataset: str | None = None
    max_upload_bytes: int = int(2048e6)
    infer_timeout_s: float = 300.0
    lease_s: float = 1800.0
    max_leases_per_user: int = 4
    upload_quota_bytes: int = int(500e9)
    min_free_bytes: int = int(5e9)
    active_learning_model: str | None = None
    retrain_after_labels: int = 3
    retrain_params: dict[str, str] = field(default_factory=dict)
    auto_scoring: bool = False
    region_size: tuple[int, int, int] | None = (64, 256, 256)
    max_voxels_in_memory: int = DEFAULT_MAX_VOXELS_IN_MEMORY
    max_image_voxels: int = DEFAULT_MAX_IMAGE_VOXELS
    view_cache_mb: float = 2048.0
    auth: bool = False
    token_ttl_s: float = 12 * 3600.0
    admin_password: str | None = None
    auth_secret: str | None = None
    volume_roots: tuple[str, ...] = ()
    dicomweb_url: str | None = None

    @classmethod
    def read(
        cls, app_dir: str, studies: str, conf: Mapping[str, str], env: Mapping[str, str] | None = None
    ) -> Settings:
        """The settings from MONAI Label's conf dict and the environment (``os.environ`` unless given)."""
        env = os.environ if env is None else env
        workdir = conf.get("workdir") or os.path.join(studies, ".axonseg")
        redis_url = env.get("REDIS_URL")
        if not redis_url:
            raise SettingsError(
                "REDIS_URL is not set: start the server with `make serve` (embedded Redis and workers) "
                "or point REDIS_URL at the Redis your workers use"
            )
        return cls(
            studies=studies,
            workdir=workdir,
            model_dir=os.path.join(app_dir, "model"),
            redis_url=redis_url,
            database_url=database_url(workdir),
            dataset=conf.get("dataset") or None,
            max_upload_bytes=int(_number(conf, "max_upload_mb", 2048, 0.001, 1e7) * 1e6),
            infer_timeout_s=_number(conf, "infer_timeout_s", 300, 1, 86400),
            lease_s=_number(conf, "lease_s", 1800, 1, 7 * 86400),
            max_leases_per_user=int(_number(conf, "max_leases_per_user", 4, 1, 10_000)),
            upload_quota_bytes=int(_number(conf, "upload_quota_gb", 500, 0, 1e9) * 1e9),
            min_free_bytes=int(_number(conf, "min_free_gb", 5, 0, 1e9) * 1e9),
            active_learning_model=conf.get("active_learning_model") or None,
            retrain_after_labels=int(_number(conf, "retrain_after_labels", 3, 0, 1e6)),
            retrain_params=retrain_params(conf.get("retrain_params")),
            auto_scoring=str(conf.get("auto_scoring", "false")).lower() in ("true", "1", "yes"),
            region_size=region_size(conf.get("region_size", conf.get("block_size", "64,256,256"))),
            max_voxels_in_memory=int(_number(conf, "max_voxels_in_memory", DEFAULT_MAX_VOXELS_IN_MEMORY, 1, 1e15)),
            max_image_voxels=int(_number(conf, "max_image_voxels", DEFAULT_MAX_IMAGE_VOXELS, 1, 1e15)),
            view_cache_mb=_number(conf, "view_cache_mb", 2048, 0, 1e9),
            auth=auth_wanted(conf.get("auth"), env.get("AXONSEG_AUTH")),
            token_ttl_s=_number(conf, "token_ttl_h", 12, 0.001, 24 * 366) * 3600,
            admin_password=env.get("AXONSEG_ADMIN_PASSWORD") or None,
            auth_secret=env.get("AXONSEG_AUTH_SECRET") or None,
            volume_roots=tuple(volume_roots()),
            dicomweb_url=conf.get("dicomweb_url") or env.get("AXONSEG_DICOMWEB_URL") or None,
        )


def _number(conf: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    """``conf[key]`` as a finite number in [low, high], else a :class:`SettingsError` naming the key."""
    text = conf.get(key)
    if text is None or str(text).strip() == "":
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(f"--conf {key} must be a number from {low:g} to {high:g}, not {log_safe(text)!r}")
    return value


def auth_wanted(conf_value: str | None, env_value: str | None) -> bool:
    """Whether auth is on, from ``--conf auth`` and AXONSEG_AUTH. Fails closed: an unreadable value, or the two
    saying different things, stops the server with the reason rather than guessing."""
    said: dict[str, bool] = {}
    for source, value in (("--conf auth", conf_value), ("AXONSEG_AUTH", env_value)):
        if value is None or str(value).strip() == "":
            continue
        text = str(value).strip().lower()
        if text not in _ON + _OFF:
            raise SettingsError(f"{source} must be on or off, not {log_safe(value)!r}")
        said[source] = text in _ON
    if len(set(said.values())) > 1:
        raise SettingsError(
            f"--conf auth says {'on' if said['--conf auth'] else 'off'} but AXONSEG_AUTH says "
            f"{'on' if said['AXONSEG_AUTH'] else 'off'}; refusing to start until they agree (or one is unset)"
        )
    return any(said.values())


def retrain_params(text: str | None) -> dict[str, str]:
    """``--conf retrain_params max_epochs=2,iterations=40`` as a dict (checked by every trainer at start-up).
    ``key=value`` pairs: MONAI Label passes conf values through a shell, which would strip JSON's quotes."""
    params: dict[str, str] = {}
    for pair in filter(None, (text or "").split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--conf retrain_params takes key=value pairs, not {log_safe(pair)!r}")
        params[key.strip()] = value.strip()
    return params


def region_size(text: str) -> tuple[int, int, int] | None:
    """``--conf region_size z,y,x`` (voxels), or None for ``0``/empty (volumes are not tiled)."""
    if text.strip() in ("", "0"):
        return None
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise SettingsError(f"--conf region_size must be 'z,y,x' voxels (e.g. 64,256,256) or 0, not {text!r}")
    return size[0], size[1], size[2]
