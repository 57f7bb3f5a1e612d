"""Inference speed and memory: axonseg's infer task vs the stock MONAI Label path vs raw forward.

All three run the same shipped network on the same real volume, each in its own subprocess so that
peak memory (max RSS) is measured per path:

- ``raw``: the network's forward pass over exactly the sliding-window tiles (real data, batches of
  2), timed alone: no reading, normalising, blending or writing.
- ``stock``: MONAI Label's ``BasicInferTask`` with the usual stock transforms (``LoadImaged`` of a
  NRRD, percentile scaling, ``SlidingWindowInferer``, sigmoid, threshold, stock ``Writer``).
- ``ours``: ``SegmentationInfer`` (microscopy reader, percentile normalisation, Gaussian sliding
  window, post-processing, NRRD writer on the image geometry).

    .venv/bin/python benchmarks/infer_throughput.py --model mitochondria --repeat 3

writes ``benchmarks/reports/infer_throughput_<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.machine import describe_machine  # noqa: E402

# model → (shared data file, dataset, crop z, y, x); crops of held-out regions.
VOLUMES = {
    "mitochondria": ("lucchi_pp_train.h5", "raw", ((133, 165), (0, 512), (0, 512))),
    "membrane": ("isbi2012_sstem.h5", "raw", ((0, 30), (0, 512), (0, 512))),
    "synapse": ("drosophila_vnc_stack1_xlt512.h5", "raw", ((0, 20), (512, 1024), (0, 512))),
    "axon": ("trailmap_example_chunk_unlabeled.h5", "raw", ((0, 128), (0, 128), (0, 128))),
}


def prepare_volume(model: str, data_dir: Path, out: Path) -> Path:
    import numpy as np

    from lib.transforms.io import Volume, read_volume, write_volume

    file, dataset, region = VOLUMES[model]
    volume = read_volume(data_dir / file, dataset)
    crop = np.ascontiguousarray(volume.array[tuple(slice(a, b) for a, b in region)])
    return Path(write_volume(out / f"{model}_bench.nrrd", Volume(crop, volume.spacing)))


def run_raw(model: str, image: str, device: str) -> dict:
    import numpy as np
    import torch
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from lib.configs.registry import SPECS
    from lib.networks import load_weights
    from lib.transforms.intensity import normalize_percentiles
    from lib.transforms.io import read_volume

    spec = SPECS[model]
    network, _ = load_weights(str(ROOT / "apps/axonseg/model" / f"{model}.pt"), device)
    array = normalize_percentiles(read_volume(image).array, spec.percentiles, spec.intensity_ceiling)
    pad = [(0, max(p - s, 0)) for s, p in zip(array.shape, spec.patch_size)]
    volume = torch.from_numpy(np.pad(array, pad))
    interval = _get_scan_interval(volume.shape, spec.patch_size, 3, (spec.overlap,) * 3)
    windows = [volume[w][None] for w in dense_patch_slices(volume.shape, spec.patch_size, interval)]
    batches = [torch.stack(windows[i : i + 2]).to(device) for i in range(0, len(windows), 2)]
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            network(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "voxels": int(np.prod(array.shape)), "tiles": len(windows)}


def run_stock(model: str, image: str, device: str) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks" / "stock_app"))
    from main import stock_infer_task

    task = stock_infer_task(model)
    start = time.perf_counter()
    result, _ = task({"image": image, "device": device})
    seconds = time.perf_counter() - start
    os.remove(result)
    return {"seconds": seconds, "voxels": int(np.prod(_shape(image)))}


def run_ours(model: str, image: str, device: str) -> dict:
    import numpy as np

    from lib.wiring import init_task_configs

    task = init_task_configs(tempfile.mkdtemp())[model].infer()
    start = time.perf_counter()
    result, _ = task({"image": image, "device": device})
    seconds = time.perf_counter() - start
    os.remove(result)
    return {"seconds": seconds, "voxels": int(np.prod(_shape(image)))}


def _shape(image: str) -> tuple[int, ...]:
    from lib.transforms.io import read_volume

    return read_volume(image).shape


PATHS = {"raw": run_raw, "stock": run_stock, "ours": run_ours}


def child(path: str, model: str, image: str, device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    PATHS[path](model, image, device)  # warm-up: weights load, allocator, MKL/oneDNN kernels
    result = PATHS[path](model, image, device)
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mitochondria", "axon"])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "MODEL", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.device, args.threads)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            image = prepare_volume(model, args.data_dir, Path(tmp))
            runs: dict[str, list[dict]] = {path: [] for path in PATHS}
            for _ in range(args.repeat):  # interleaved, so drifting machine load hits every path alike
                for path in PATHS:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", path, model, str(image),
                         "--device", args.device, "--threads", str(args.threads)],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    runs[path].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(model, path, runs[path][-1], flush=True)
            for path, results in runs.items():
                rows.append((model, path, min(results, key=lambda r: r["seconds"]), _shape(str(image))))

    lines = [
        f"# Inference throughput ({args.device})",
        "",
        f"Machine: {describe_machine(args.device)}, Python {platform.python_version()}; {args.threads} threads.",
        f"Best of {args.repeat} runs, each in a fresh process after one warm-up call; peak memory is the",
        "process's max RSS (includes Python, torch, data).",
        "Same shipped network, same volume (a crop of held-out real data), same tiles and overlap on every path.",
        "",
        "| model | volume (z, y, x) | path | seconds | Mvox/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for model, path, r, shape in rows:
        mvox = r["voxels"] / 1e6 / r["seconds"]
        lines.append(f"| {model} | {shape} | {path} | {r['seconds']:.2f} | {mvox:.2f} | {r['max_rss_mb']:.0f} |")
    lines += [
        "",
        "`raw` = forward passes only over the same tiles; `stock` = MONAI Label BasicInferTask (ROI given in ITK's",
        "(x, y, z) order; with the (z, y, x) ROI unreversed it tiles ~3x more windows on anisotropic volumes);",
        "`ours` = axonseg SegmentationInfer. Both full paths include reading the NRRD and writing the result.",
        "Run-to-run spread on a shared VM can reach ±20 % (every run is printed); smaller differences are noise.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/infer_throughput.py " + " ".join(sys.argv[1:]) + "`",
    ]
    report = ROOT / "benchmarks" / "reports" / f"infer_throughput_{args.device}.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
