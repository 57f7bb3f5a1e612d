"""axonseg: a MONAI Label app for neural structures in 3D microscopy.

    REDIS_URL=redis://... monailabel start_server --app apps/axonseg --studies work/datastore --conf workdir work

(``make serve`` does this with an embedded Redis and workers; see ``lib/jobs/embedded.py``.)

Environment:
    REDIS_URL      the job queue (required; workers must use the same one)
    DATABASE_URL   SQLAlchemy URL (default: SQLite file ``<workdir>/axonseg.db``)

Conf keys (``--conf key value``):
    workdir          the volume store, retrained weights, training stats, region views, label versions,
                     uploads
                     (default: <studies>/.axonseg); workers must see the same folder
    dataset          default dataset path inside HDF5/Zarr/N5 uploads (default: found automatically)
    max_upload_mb    largest accepted request body (default 2048)
    infer_timeout_s  /infer answers 504 after this long (default 300)
    lease_s          how long next-sample keeps an image for one annotator (default 1800)
    active_learning_model   the model the score-ranked strategies use unless a request names one
                     (default: the first model, axon)
    retrain_after_labels    queue a fine-tuning run of a structure after this many newly labelled regions
                     of it (default 3; 0 turns it off)
    retrain_params   the options of those runs, as trainer option pairs (default: the trainer's own),
                     e.g. max_epochs=2,iterations=40
    auto_scoring     queue scoring jobs at start-up for images without a fresh score (default false:
                     next-sample queues them when a score-ranked strategy first needs them)
    region_size      tile volumes larger than this into regions that annotators are handed one at a time,
                     "z,y,x" voxels, rounded up to whole chunks (default 64,256,256; 0 turns it off;
                     ``block_size`` is the old name)
    max_voxels_in_memory   the most voxels one request may make a process hold (a whole-image view,
                     a NRRD/NIfTI file); above it the request is refused with 413 (default 536870912)
    max_image_voxels the largest image accepted (default 274877906944 = 256 Gvox)
    view_cache_mb    bound on the NRRD crops of regions kept for downloads (default 2048)
    auth             on: built-in users and roles (README "Users and security"); default off, or
                     AXONSEG_AUTH (if both are set they must agree, else the server does not start);
                     MONAI Label's Keycloak settings (MONAI_LABEL_AUTH_ENABLE) select oidc
    token_ttl_h      lifetime of an access token (default 12)
    max_leases_per_user    regions one user (or client_id, auth off) may hold at once; asking for another
                     sample releases the oldest (default 4)
    upload_quota_gb  what one user's images still in the datastore may take to upload (default 500)
    min_free_gb      uploads are refused when they would leave less free disk in the workdir (default 5)

Environment (also): AXONSEG_ADMIN_PASSWORD creates the user ``admin`` on first start with auth on;
AXONSEG_AUTH_SECRET signs tokens (default: a random secret kept in ``<workdir>/auth_secret``);
AXONSEG_VOLUME_ROOTS, folders (``os.pathsep``-separated) whose Zarr/N5 volumes may be
registered in place (``POST /volumes/register``) or pretrained on.
"""

from __future__ import annotations

import logging
import os
import threading

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.activelearning.first import First

from lib.activelearning.leases import WithoutLeased
from lib.activelearning.retrain import RetrainTrigger
from lib.activelearning.scores import Scores
from lib.activelearning.scoring import SCORING_METHODS
from lib.activelearning.strategies import DiverseBatch, QueuedScoring, RecentlyServedLast, ScoreRanked
from lib.auth.accounts import Accounts
from lib.auth.guard import Authenticator
from lib.auth.identity import caller
from lib.auth.throttle import LoginThrottle
from lib.auth.tokens import TokenIssuer, load_secret
from lib.configs.registry import init_task_configs, init_trainers
from lib.configs.task_config import StructureTaskConfig
from lib.datastore import DEFAULT_MAX_IMAGE_VOXELS, DEFAULT_MAX_VOXELS_IN_MEMORY, MicroscopyDatastore
from lib.db.engine import database_url, upgrade
from lib.db.store import Database
from lib.errors import AxonSegError, NotFound
from lib.identifiers import log_safe
from lib.jobs.client import JobClient
from lib.jobs.training import TrainingRuns
from lib.jobs.volume_jobs import VolumeJobs
from lib.routes import replace_routes
from lib.server import install_http_guards
from lib.transforms.io import warm_up as warm_up_writers
from lib.volumes.roots import volume_roots
from lib.volumes.upgrade import upgrade_workdir

logger = logging.getLogger(__name__)

__version__ = "0.2.0"

# A strategy that keeps proposing images other annotators just claimed is retried this often.
_LEASE_ATTEMPTS = 20


class AxonSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        conf.setdefault("workdir", os.path.join(studies, ".axonseg"))
        os.makedirs(conf["workdir"], exist_ok=True)
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                "REDIS_URL is not set: start the server with `make serve` (embedded Redis and workers) "
                "or point REDIS_URL at the Redis your workers use",
            )
        self.model_dir = os.path.join(app_dir, "model")
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", 2048)) * 1e6)
        self.infer_timeout_s = float(conf.get("infer_timeout_s", 300))
        self.lease_s = float(conf.get("lease_s", 1800))
        url = database_url(conf["workdir"])
        upgrade(url)
        self.db = Database(url)
        self.jobs = JobClient(redis_url)
        self.auth = _authenticator(conf, self.db)
        self.login_throttle = LoginThrottle(self.jobs.connection)
        self.max_leases_per_user = int(conf.get("max_leases_per_user", 4))
        self.upload_quota_bytes = int(float(conf.get("upload_quota_gb", 500)) * 1e9)
        self.min_free_bytes = int(float(conf.get("min_free_gb", 5)) * 1e9)
        self.task_configs = init_task_configs(conf["workdir"], self.model_dir)
        self.active_learning_model = conf.get("active_learning_model", next(iter(self.task_configs)))
        if self.active_learning_model not in self.task_configs:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"--conf active_learning_model {self.active_learning_model!r} is not a model; "
                f"choose one of {', '.join(self.task_configs)}",
            )
        self.trainers = init_trainers(self.task_configs, conf["workdir"], studies)
        self.training = TrainingRuns(self.db, self.jobs, self.trainers)
        self.retrain = RetrainTrigger(
            self.db,
            self.training,
            int(conf.get("retrain_after_labels", 3)),
            {name: config.spec for name, config in self.task_configs.items()},
            _retrain_params(conf.get("retrain_params"), self.trainers, self.task_configs),
        )
        self.scores = Scores(self.db, self.jobs, lambda: self.datastore(), list(self.task_configs))
        self.volume_jobs = VolumeJobs(
            self.db, self.jobs, conf["workdir"], {name: config.spec for name, config in self.task_configs.items()}
        )
        for name, config in self.task_configs.items():
            # The weights served now are the active version (a retrained file wins over the shipped one).
            path = config.weights.path()
            if path:
                source = "trained" if path == config.weights.trained_path else "shipped"
                self.db.register_model_version(name, path, source)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="axonseg",
            description="Axons, mitochondria, synapses and membranes in 3D light-sheet and electron microscopy",
            version=__version__,
        )

    def task_config(self, model: str) -> StructureTaskConfig:
        if model not in self.task_configs:
            raise NotFound(f"unknown model '{model}'; available models: {', '.join(self.task_configs)}")
        return self.task_configs[model]

    def init_datastore(self) -> MicroscopyDatastore:
        workdir = self.conf["workdir"]
        datastore = MicroscopyDatastore(
            self.studies,
            workdir,
            self.db,
            {name: config.spec for name, config in self.task_configs.items()},
            region_size=_region_size(self.conf.get("region_size", self.conf.get("block_size", "64,256,256"))),
            max_voxels_in_memory=int(float(self.conf.get("max_voxels_in_memory", DEFAULT_MAX_VOXELS_IN_MEMORY))),
            max_image_voxels=int(float(self.conf.get("max_image_voxels", DEFAULT_MAX_IMAGE_VOXELS))),
            volume_roots=volume_roots(),
            dataset=self.conf.get("dataset"),
            on_final_label=self.retrain.label_saved,
            view_cache_mb=float(self.conf.get("view_cache_mb", 2048)),
        )
        upgrade_workdir(datastore, workdir)  # a work folder from before the chunked store
        datastore.add_found_files()
        threading.Thread(target=warm_up_writers, name="warm-up-nrrd", daemon=True).start()
        return datastore

    def init_infers(self):
        return {name: config.infer() for name, config in self.task_configs.items()}

    def init_trainers(self):
        return self.trainers

    def init_strategies(self):
        ranked = {m: ScoreRanked(m, self.scores, self.active_learning_model) for m in ("epistemic", "entropy", "tta")}
        diverse = DiverseBatch(self.scores, self.active_learning_model)
        return {"random": RecentlyServedLast(), "first": First(), **ranked, "diverse": diverse}

    def init_scoring_methods(self):
        descriptions = {
            "epistemic": "BALD: mutual information between prediction and weights under MC dropout",
            "entropy": "Predictive entropy under MC dropout (total uncertainty)",
            "tta": "Disagreement between test-time-augmented predictions of unlabelled images",
            "dice": "1 - Dice of the model's original prediction and the annotator's final label",
        }
        return {m: QueuedScoring(m, descriptions[m], self.scores, self.active_learning_model) for m in SCORING_METHODS}

    def async_scoring(self, method, params=None):
        """MONAI Label calls this at start-up: queue jobs for the images lacking a fresh score of the
        active-learning model (the stock version starts a second app in a subprocess per method)."""
        if method is None and self.conf.get("auto_scoring", "false").lower() not in ("true", "1", "yes"):
            return {}
        methods = [method] if method else list(SCORING_METHODS)
        return {m: self.scores.submit(self.active_learning_model, m) for m in methods}

    def info(self):
        """Most recently started training first: Slicer's progress bar shows only the first entry."""
        meta = super().info()
        stats = meta["train_stats"]
        meta["train_stats"] = dict(sorted(stats.items(), key=lambda kv: -float(kv[1].get("start_ts", 0))))
        return meta

    def next_sample(self, request):
        """The strategy's pick among images no other annotator holds a live lease on; leases it to the caller.

        Returns {} (as MONAI Label does) when every unlabelled image is leased or none is left.
        """
        strategy = self._strategies.get(request.get("strategy") or "random")
        if strategy is None:
            return super().next_sample(request)  # MONAI Label's own error for unknown strategies
        client_id = caller().client_id(request.get("client_id"))
        hidden = self.db.leased_by_others(client_id)
        for _ in range(_LEASE_ATTEMPTS):
            result = strategy(request, WithoutLeased(self.datastore(), hidden))
            if not result or not result.get("id"):
                return {}
            if self.db.acquire_lease(result["id"], client_id, self.lease_s, self.max_leases_per_user):
                crop = self.datastore().get_image_uri(result["id"])  # the region's NRRD crop, made now
                if caller().may("admin"):  # a server path: Slicer on the same machine opens it directly
                    result["path"] = crop
                else:
                    result.pop("path", None)  # Slicer downloads it (GET /datastore/image)
                result["lease_s"] = self.lease_s
                # where the region lies in its image (parent only for images split into regions)
                info = self.datastore().get_image_info(result["id"])
                result.update({k: info[k] for k in ("image", "parent", "offset", "shape") if k in info})
                return result
            hidden.add(result["id"])  # claimed by someone else a moment ago
        return {}

    def server_mode(self, mode: bool):
        super().server_mode(mode)
        if mode:
            from monailabel.app import app as fastapi_app

            install_http_guards(fastapi_app, self.max_upload_bytes, self.auth)
            replace_routes(fastapi_app, with_login=self.auth.mode != "oidc")
            # Whole-volume jobs that were running: queue again what a restarted Redis lost.
            threading.Thread(target=self.volume_jobs.reconcile_running, name="volume-jobs", daemon=True).start()


def _authenticator(conf: dict[str, str], db: Database) -> Authenticator:
    """Built-in auth if asked for (creating ``admin`` from AXONSEG_ADMIN_PASSWORD on first start), MONAI
    Label's OIDC if its settings say so, else off."""
    from monailabel.config import settings

    if settings.MONAI_LABEL_AUTH_ENABLE:
        return Authenticator("oidc")
    if not _auth_wanted(conf.get("auth"), os.environ.get("AXONSEG_AUTH")):
        logger.warning("auth: OFF (anyone who reaches this port is an admin; `make serve AUTH=on` turns users on)")
        return Authenticator("off")
    accounts = Accounts(db)
    if accounts.ensure_admin(os.environ.get("AXONSEG_ADMIN_PASSWORD")):
        logger.info("auth: created user 'admin' from AXONSEG_ADMIN_PASSWORD")
    if not db.users():
        raise MONAILabelException(
            MONAILabelError.APP_INIT_ERROR,
            "auth is on but there are no users: set AXONSEG_ADMIN_PASSWORD for the first start, or add one with "
            "`PYTHONPATH=apps/axonseg python -m lib.users add NAME --role admin`",
        )
    issuer = TokenIssuer(load_secret(conf["workdir"]), float(conf.get("token_ttl_h", 12)) * 3600)
    logger.warning(f"auth: ON (built-in users: {len(db.users())}; every route needs a login but /auth/ and /docs)")
    return Authenticator("builtin", accounts, issuer)


_ON, _OFF = ("on", "true", "1", "yes"), ("off", "false", "0", "no")


def _auth_wanted(conf_value: str | None, env_value: str | None) -> bool:
    """Whether auth is on, from ``--conf auth`` and AXONSEG_AUTH. Fails closed: an unreadable value, or the two
    saying different things, stops the server with the reason rather than guessing."""
    said: dict[str, bool] = {}
    for source, value in (("--conf auth", conf_value), ("AXONSEG_AUTH", env_value)):
        if value is None or str(value).strip() == "":
            continue
        text = str(value).strip().lower()
        if text not in _ON + _OFF:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR, f"{source} must be on or off, not {log_safe(value)!r}"
            )
        said[source] = text in _ON
    if len(set(said.values())) > 1:
        raise MONAILabelException(
            MONAILabelError.APP_INIT_ERROR,
            f"--conf auth says {'on' if said['--conf auth'] else 'off'} but AXONSEG_AUTH says "
            f"{'on' if said['AXONSEG_AUTH'] else 'off'}; refusing to start until they agree (or one is unset)",
        )
    return any(said.values())


def _retrain_params(text: str | None, trainers: dict, models: dict) -> dict:
    """``--conf retrain_params max_epochs=2,iterations=40``: the options of automatic fine-tuning runs, checked
    now by every model's trainer, so a bad value stops the start rather than each run. (``key=value`` pairs:
    MONAI Label passes conf values through a shell, which would strip JSON's quotes.)"""
    params: dict[str, str] = {}
    for pair in filter(None, (text or "").split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR, f"--conf retrain_params takes key=value pairs, not {pair!r}"
            )
        params[key.strip()] = value.strip()
    for model in models:
        try:
            trainers[model].resolve(params)
        except AxonSegError as e:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, f"--conf retrain_params: {e}") from e
    return params


def _region_size(text: str) -> tuple[int, int, int] | None:
    if text.strip() in ("", "0"):
        return None
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"--conf region_size must be 'z,y,x' voxels (e.g. 64,256,256) or 0, not {text!r}")
    return size  # type: ignore[return-value]
