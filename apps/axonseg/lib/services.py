"""The objects the HTTP routes use, built once at start-up from :class:`~lib.settings.Settings` and handed to every
route as a FastAPI dependency (``svc: Svc``), so no route reaches for a global app.

    request -> route (lib/api/*) -> Services -> database / queue (job) -> worker -> result
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from monailabel.tasks.activelearning.first import First

from .activelearning.leases import WithoutLeased
from .activelearning.retrain import RetrainTrigger
from .activelearning.scores import Scores
from .activelearning.strategies import DiverseBatch, RecentlyServedLast, ScoreRanked
from .auth.accounts import Accounts
from .auth.guard import Authenticator
from .auth.identity import caller
from .auth.throttle import LoginThrottle
from .auth.tokens import TokenIssuer, load_secret
from .datastore import MicroscopyDatastore
from .db.engine import upgrade
from .db.store import Database
from .dicomweb.series import FrameCache
from .errors import AxonSegError, InvalidRequest, check_model
from .jobs.client import JobClient
from .jobs.training import TrainingRuns
from .jobs.volume_jobs import VolumeJobs
from .settings import Settings, SettingsError
from .trainers.task import StructureTrainer
from .transforms.io import warm_up as warm_up_writers
from .volumes.upgrade import upgrade_workdir
from .wiring import StructureTaskConfig, init_task_configs, init_trainers

logger = logging.getLogger(__name__)

# A strategy that keeps proposing images other annotators just claimed is retried this often.
_LEASE_ATTEMPTS = 20


@dataclass
class Services:
    """Settings, database, job client, datastore, training, scores, volume jobs and auth: one of each."""

    settings: Settings
    db: Database
    jobs: JobClient
    auth: Authenticator
    login_throttle: LoginThrottle
    task_configs: dict[str, StructureTaskConfig]
    trainers: dict[str, StructureTrainer]
    training: TrainingRuns
    retrain: RetrainTrigger
    datastore: MicroscopyDatastore
    scores: Scores
    volume_jobs: VolumeJobs
    strategies: dict[str, Any]
    dicom_frames: FrameCache
    active_learning_model: str

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Everything the server needs, in dependency order; a bad setting raises :class:`SettingsError`."""
        os.makedirs(settings.workdir, exist_ok=True)
        upgrade(settings.database_url)
        db = Database(settings.database_url)
        jobs = JobClient(settings.redis_url)
        task_configs = init_task_configs(settings.workdir, settings.model_dir)
        active_learning_model = settings.active_learning_model or next(iter(task_configs))
        if active_learning_model not in task_configs:
            raise SettingsError(
                f"--conf active_learning_model {active_learning_model!r} is not a model; "
                f"choose one of {', '.join(task_configs)}"
            )
        trainers = init_trainers(task_configs, settings.workdir, settings.studies)
        _check_retrain_params(settings.retrain_params, [trainers[name] for name in task_configs])
        specs = {name: config.spec for name, config in task_configs.items()}
        training = TrainingRuns(db, jobs, trainers)
        retrain = RetrainTrigger(db, training, settings.retrain_after_labels, specs, settings.retrain_params)
        datastore = _datastore(settings, db, specs, retrain)
        scores = Scores(db, jobs, lambda: datastore, list(task_configs))
        _register_served_weights(db, task_configs)
        return cls(
            settings=settings,
            db=db,
            jobs=jobs,
            auth=_authenticator(settings, db),
            login_throttle=LoginThrottle(jobs.connection),
            task_configs=task_configs,
            trainers=trainers,
            training=training,
            retrain=retrain,
            datastore=datastore,
            scores=scores,
            volume_jobs=VolumeJobs(db, jobs, settings.workdir, specs),
            strategies=_strategies(scores, active_learning_model),
            dicom_frames=FrameCache(),
            active_learning_model=active_learning_model,
        )

    def task_config(self, model: str) -> StructureTaskConfig:
        """The model's task config; 404 naming the models there are."""
        return self.task_configs[check_model(model, self.task_configs)]

    def next_sample(self, strategy_name: str, request: dict[str, Any]) -> dict[str, Any]:
        """The strategy's pick among images no other annotator holds a live lease on, leased to the caller, with
        its image info; {} (as MONAI Label answers) when every unlabelled image is leased or none is left."""
        strategy = self.strategies.get(strategy_name or "random")
        if strategy is None:
            raise InvalidRequest(
                f"ActiveLearning Task is not Initialized. There is no such strategy '{strategy_name}' available"
            )
        client_id = caller().client_id(request.get("client_id"))
        hidden = self.db.leased_by_others(client_id)
        for _ in range(_LEASE_ATTEMPTS):
            result = strategy({"strategy": strategy_name, **request}, WithoutLeased(self.datastore, hidden))
            if not result or not result.get("id"):
                return {}
            if self.db.acquire_lease(result["id"], client_id, self.settings.lease_s, self.settings.max_leases_per_user):
                return self._leased(result, strategy_name, client_id)
            hidden.add(result["id"])  # claimed by someone else a moment ago
        return {}

    def _leased(self, result: dict[str, Any], strategy_name: str, client_id: str) -> dict[str, Any]:
        image_id = result["id"]
        crop = self.datastore.get_image_uri(image_id)  # the region's NRRD crop, made now
        if caller().may("admin"):  # a server path: Slicer on the same machine opens it directly
            result["path"] = crop
        else:
            result.pop("path", None)  # Slicer downloads it (GET /datastore/image)
        result["lease_s"] = self.settings.lease_s
        info = self.datastore.get_image_info(image_id)
        # where the region lies in its image (parent only for images split into regions)
        result.update({k: info[k] for k in ("image", "parent", "offset", "shape") if k in info})
        served = dict(info.get("strategy") or {})  # when each strategy last served it (MONAI Label's record)
        served[strategy_name] = {"ts": int(time.time()), "client_id": client_id}
        self.datastore.update_image_info(image_id, {"strategy": served})
        return {**result, **self.datastore.get_image_info(image_id)}


def from_request(request: Request) -> Services:
    """The FastAPI dependency: the services :func:`lib.api.install.install` put on the app's state."""
    return request.app.state.services


Svc = Annotated[Services, Depends(from_request)]


def _datastore(settings: Settings, db: Database, specs: dict, retrain: RetrainTrigger) -> MicroscopyDatastore:
    datastore = MicroscopyDatastore(
        settings.studies,
        settings.workdir,
        db,
        specs,
        region_size=settings.region_size,
        max_voxels_in_memory=settings.max_voxels_in_memory,
        max_image_voxels=settings.max_image_voxels,
        volume_roots=list(settings.volume_roots),
        dataset=settings.dataset,
        on_final_label=retrain.label_saved,
        view_cache_mb=settings.view_cache_mb,
    )
    upgrade_workdir(datastore, settings.workdir)  # a work folder from before the chunked store
    datastore.add_found_files()
    threading.Thread(target=warm_up_writers, name="warm-up-nrrd", daemon=True).start()
    return datastore


def _strategies(scores: Scores, model: str) -> dict[str, Any]:
    ranked = {m: ScoreRanked(m, scores, model) for m in ("epistemic", "entropy", "tta")}
    return {"random": RecentlyServedLast(), "first": First(), **ranked, "diverse": DiverseBatch(scores, model)}


def _register_served_weights(db: Database, task_configs: dict[str, StructureTaskConfig]) -> None:
    """The weights served now are each model's active version (a retrained file wins over the shipped one)."""
    for name, config in task_configs.items():
        path = config.weights.path()
        if path:
            db.register_model_version(name, path, "trained" if path == config.weights.trained_path else "shipped")


def _check_retrain_params(params: dict[str, str], trainers: list[StructureTrainer]) -> None:
    """Every model's trainer (not the pretrainer: retraining on labels never runs it) checks ``--conf
    retrain_params`` now, so a bad value stops the start, not each run."""
    for trainer in trainers:
        try:
            trainer.resolve(params)
        except AxonSegError as e:
            raise SettingsError(f"--conf retrain_params: {e}") from e


def _authenticator(settings: Settings, db: Database) -> Authenticator:
    """Built-in auth if asked for (creating ``admin`` from AXONSEG_ADMIN_PASSWORD on first start), MONAI Label's
    OIDC if its settings say so, else off."""
    from monailabel.config import settings as monailabel_settings

    if monailabel_settings.MONAI_LABEL_AUTH_ENABLE:
        return Authenticator("oidc")
    if not settings.auth:
        logger.warning("auth: OFF (anyone who reaches this port is an admin; `make serve AUTH=on` turns users on)")
        return Authenticator("off")
    accounts = Accounts(db)
    if accounts.ensure_admin(settings.admin_password):
        logger.info("auth: created user 'admin' from AXONSEG_ADMIN_PASSWORD")
    if not db.users():
        raise SettingsError(
            "auth is on but there are no users: set AXONSEG_ADMIN_PASSWORD for the first start, or add one with "
            "`PYTHONPATH=apps/axonseg python -m lib.users add NAME --role admin`"
        )
    issuer = TokenIssuer(load_secret(settings.workdir, settings.auth_secret), settings.token_ttl_s)
    logger.warning(f"auth: ON (built-in users: {len(db.users())}; every route needs a login but /auth/ and /docs)")
    return Authenticator("builtin", accounts, issuer)
