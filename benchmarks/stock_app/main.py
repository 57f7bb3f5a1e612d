"""Stock MONAI Label, for benchmarks: ``BasicInferTask`` with the usual stock transforms, serving an axonseg
network (same weights) in-process from the stock ``LocalDatastore``, with no queue and no database.

    monailabel start_server --app benchmarks/stock_app --studies <folder of NRRD volumes>
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "apps", "axonseg"))

from monai.inferers import SlidingWindowInferer  # noqa: E402
from monai.transforms import (  # noqa: E402
    Activationsd,
    AsDiscreted,
    EnsureChannelFirstd,
    Lambdad,
    LoadImaged,
    ScaleIntensityRangePercentilesd,
    SqueezeDimd,
)
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferType  # noqa: E402
from monailabel.tasks.infer.basic_infer import BasicInferTask  # noqa: E402

from lib.configs.registry import SPECS  # noqa: E402
from lib.networks import build_network  # noqa: E402


def stock_infer_task(model: str) -> BasicInferTask:
    spec = SPECS[model]

    class StockInfer(BasicInferTask):
        def pre_transforms(self, data=None):
            return [
                LoadImaged(keys="image", reader="ITKReader"),
                EnsureChannelFirstd(keys="image"),
                ScaleIntensityRangePercentilesd("image", *spec.percentiles, b_min=0.0, b_max=1.0, clip=False),
                # the spec's clip range: [0, 1] for the EM models, [0, ceiling] for background-referenced axons
                Lambdad("image", lambda x: x.clamp(0.0, spec.intensity_ceiling)),
            ]

        def inferer(self, data=None):
            # MONAI's ITKReader yields (x, y, z); with the (z, y, x) ROI unreversed the stock path
            # tiles ~3x more windows here and runs anisotropic kernels along the wrong axes.
            return SlidingWindowInferer(
                roi_size=spec.patch_size[::-1], sw_batch_size=2, overlap=spec.overlap, mode="gaussian"
            )

        def post_transforms(self, data=None):
            return [
                Activationsd(keys="pred", sigmoid=True),
                AsDiscreted(keys="pred", threshold=spec.threshold),
                SqueezeDimd(keys="pred", dim=0),
            ]

    return StockInfer(
        path=os.path.join(ROOT, "apps", "axonseg", "model", f"{model}.pt"),
        network=build_network(**spec.network_args()),
        type=InferType.SEGMENTATION, labels=spec.labels, dimension=3, description=f"stock {model}",
        model_state_dict="state_dict",
    )  # fmt: skip


class StockApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="stock", description="stock baseline")

    def init_infers(self):
        return {model: stock_infer_task(model) for model in SPECS}
