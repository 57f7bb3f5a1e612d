"""axonseg: a MONAI Label app for neural structures in 3D microscopy.

    monailabel start_server --app apps/axonseg --studies work/datastore --conf workdir work

Conf keys (``--conf key value``):
    workdir        where retrained weights, training stats and Slicer views live
                   (default: <studies>/.axonseg)
    dataset        default dataset path inside HDF5/Zarr/N5 uploads (default: found automatically)
    max_upload_mb  largest accepted request body (default 2048)
"""

from __future__ import annotations

import logging
import os
import tempfile

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.configs.registry import TASK_CONFIGS
from lib.datastore import MicroscopyDatastore, check_image_id
from lib.errors import NotFound
from lib.server import install_http_guards

logger = logging.getLogger(__name__)

__version__ = "0.1.0"


class AxonSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        conf.setdefault("workdir", os.path.join(studies, ".axonseg"))
        os.makedirs(conf["workdir"], exist_ok=True)
        self.model_dir = os.path.join(app_dir, "model")
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", 2048)) * 1e6)
        self.task_configs = {}
        for name, config_class in TASK_CONFIGS.items():
            config = config_class()
            config.init(name, self.model_dir, conf, None)
            self.task_configs[name] = config
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="axonseg",
            description="Axons, mitochondria, synapses and membranes in 3D light-sheet and electron microscopy",
            version=__version__,
        )

    def init_datastore(self) -> MicroscopyDatastore:
        return MicroscopyDatastore(
            self.studies, os.path.join(self.conf["workdir"], "views"), dataset=self.conf.get("dataset")
        )

    def init_infers(self):
        return {name: config.infer() for name, config in self.task_configs.items()}

    def init_trainers(self):
        return {name: config.trainer() for name, config in self.task_configs.items()}

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def info(self):
        """Most recently started training first: Slicer's progress bar shows only the first entry."""
        meta = super().info()
        stats = meta["train_stats"]
        meta["train_stats"] = dict(sorted(stats.items(), key=lambda kv: -float(kv[1].get("start_ts", 0))))
        return meta

    def infer(self, request, datastore=None):
        """Resolve the image strictly: a datastore id, or a file the infer endpoint just uploaded.

        Stock MONAI Label would read any existing path given as ``image``; we never do.
        """
        model = request.get("model")
        if model not in self._infers:
            raise NotFound(f"unknown model '{model}'; available models: {', '.join(self._infers)}")
        image = request.get("image")
        uploaded = (
            isinstance(image, str)
            and os.path.dirname(os.path.realpath(image)) == os.path.realpath(tempfile.gettempdir())
            and os.path.basename(image).startswith("tmp")
            and os.path.isfile(image)
        )
        if not uploaded:
            check_image_id(image)
            if not (datastore or self.datastore()).get_image_uri(image):
                raise NotFound(f"image '{image}' is not in the datastore")
        return super().infer(request, datastore)

    def bundle_path(self, model):
        """MONAI Label calls this before it starts a training subprocess: the one synchronous point
        where an unknown trainer can still be answered with 404 instead of a background failure."""
        if model is not None and model not in self._trainers:
            raise NotFound(f"unknown trainer '{model}'; available trainers: {', '.join(self._trainers)}")
        return None

    def server_mode(self, mode: bool):
        super().server_mode(mode)
        if mode:
            from monailabel.app import app as fastapi_app

            install_http_guards(fastapi_app, self.max_upload_bytes)
