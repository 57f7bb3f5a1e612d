"""axonseg: a MONAI Label app for neural structures in 3D microscopy.

    REDIS_URL=redis://... monailabel start_server --app apps/axonseg --studies work/datastore --conf workdir work

(``make serve`` does this with an embedded Redis and workers; see ``lib/jobs/embedded.py``.) The conf keys and
environment variables are listed in ``lib/settings.py``.

This class is MONAI Label's entry point and nothing more: it reads the settings, builds the services once
(``lib/services.py``) and hands MONAI Label what its hooks ask for; ``lib/api/install.py`` serves the routes.
"""

from __future__ import annotations

import threading

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

from lib.activelearning.scoring import SCORING_METHODS
from lib.activelearning.strategies import QueuedScoring
from lib.api.install import install
from lib.datastore import MicroscopyDatastore
from lib.services import Services
from lib.settings import Settings, SettingsError

__version__ = "0.2.0"

_SCORING_DESCRIPTIONS = {
    "epistemic": "BALD: mutual information between prediction and weights under MC dropout",
    "entropy": "Predictive entropy under MC dropout (total uncertainty)",
    "tta": "Disagreement between test-time-augmented predictions of unlabelled images",
    "dice": "1 - Dice of the model's original prediction and the annotator's final label",
}


class AxonSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        try:
            self.services = Services.build(Settings.read(app_dir, studies, dict(conf or {})))
        except SettingsError as e:  # MONAI Label stops the start with this message
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, str(e)) from e
        conf = {**(conf or {}), "workdir": self.services.settings.workdir}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="axonseg",
            description="Axons, mitochondria, synapses and membranes in 3D light-sheet and electron microscopy",
            version=__version__,
        )

    def init_datastore(self) -> MicroscopyDatastore:
        return self.services.datastore

    def init_infers(self):
        return {name: config.infer() for name, config in self.services.task_configs.items()}

    def init_trainers(self):
        return self.services.trainers

    def init_strategies(self):
        return self.services.strategies

    def init_scoring_methods(self):
        svc = self.services
        return {
            m: QueuedScoring(m, _SCORING_DESCRIPTIONS[m], svc.scores, svc.active_learning_model)
            for m in SCORING_METHODS
        }

    def async_scoring(self, method, params=None):
        """MONAI Label calls this at start-up: queue jobs for the images lacking a fresh score of the
        active-learning model (the stock version starts a second app in a subprocess per method)."""
        svc = self.services
        if method is None and not svc.settings.auto_scoring:
            return {}
        methods = [method] if method else list(SCORING_METHODS)
        return {m: svc.scores.submit(svc.active_learning_model, m) for m in methods}

    def info(self):
        """Most recently started training first: Slicer's progress bar shows only the first entry."""
        meta = super().info()
        stats = meta["train_stats"]
        meta["train_stats"] = dict(sorted(stats.items(), key=lambda kv: -float(kv[1].get("start_ts", 0))))
        return meta

    def server_mode(self, mode: bool):
        super().server_mode(mode)
        if mode:
            from monailabel.app import app as fastapi_app

            install(fastapi_app, self.services)
            # Whole-volume jobs that were running: queue again what a restarted Redis lost.
            volume_jobs = self.services.volume_jobs
            threading.Thread(target=volume_jobs.reconcile_running, name="volume-jobs", daemon=True).start()
