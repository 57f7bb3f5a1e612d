"""Volume store at scale: ingest memory and speed, region hand-out, and /info/ under load vs stock MONAI Label.

Three parts, each runnable on its own (``--parts``); results are merged into a JSON next to the report
and the Markdown is rendered from it, so a partial run keeps the other parts' results.

1. **ingest**: volumes of ``--sizes`` Gvox, mirror-tiled from a real volume (Lucchi++ FIB-SEM by default),
   written once into ``--scratch`` as TIFF (ImageJ, contiguous, uncompressed), HDF5 (chunked, no
   compression) and N5 (zarr 2 ``N5Store``, default compressor), are each ingested by
   ``MicroscopyDatastore.add_image`` in a fresh Python process (wall time, Mvox/s, peak RSS sampled with
   psutil every 0.1 s, and ``ru_maxrss`` from ``wait4``); the N5 is also registered in place.
2. **handout**: the real axonseg stack (``python -m lib.jobs.embedded``) on a work folder holding the
   largest volume; ``--handouts`` real 3D Slicer clients (distinct ``client_id``) each call
   ``next_sample("random")`` and download the region (``GET /datastore/image``).
3. **info**: axonseg vs stock MONAI Label (``benchmarks/stock_app``) on the sample ``trailmap_chunk.nrrd``:
   4 infer clients, 2 uploaders (64x512x512 TIFF, then delete), 2 label savers and a ``GET /info/``
   poller (every 0.2 s) for ``--seconds``.

    .venv/bin/python benchmarks/volume_store.py [--parts ingest handout info] [--sizes 0.25 1 4]
        [--handouts 40] [--seconds 60] [--scratch DIR] [--out MD]

writes ``benchmarks/reports/volume_store_<device>.md`` (and ``.json``) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "axonseg"
sys.path.insert(0, str(APP))

FORMATS = ("tiff", "hdf5", "n5")
EXTENSIONS = {"tiff": ".tif", "hdf5": ".h5", "n5": ".n5"}
INPUT_CHUNKS = (64, 256, 256)  # HDF5 and N5 inputs
RSS_GOAL = 1.5e9  # bytes
HANDOUT_GOAL_S = 1.0
INFO_GOAL_MS = 100.0
UPLOAD_SHAPE = (64, 512, 512)
SAMPLE_IMAGE = "trailmap_chunk"
CHILD_FLAG = "_measure_child"


# --- shapes and inputs ---------------------------------------------------------------------------
def shape_for(gvox: float) -> tuple[int, int, int]:
    """The power-of-two shape nearest (in log) to ``gvox`` x 1e9 voxels, z <= y == x: 0.25 -> 256x1024x1024,
    1 -> 1024^3, 4 -> 1024x2048x2048."""
    k = max(6, round(math.log2(gvox * 1e9)))
    a = math.ceil(k / 3)
    return (2 ** (k - 2 * a), 2**a, 2**a)


def shape_key(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def mirror(n_out: int, n_in: int) -> np.ndarray:
    """Indices of a mirror tiling (a b c c b a a b c ...) of an axis of ``n_in`` to ``n_out``: edges join."""
    i = np.arange(n_out) % (2 * n_in)
    return np.where(i < n_in, i, 2 * n_in - 1 - i)


class Tiler:
    """Planes of a mirror-tiled copy of a real volume, one at a time."""

    def __init__(self, raw: np.ndarray, shape: tuple[int, int, int]):
        self.raw, self.shape = raw, shape
        self.maps = [mirror(n, s) for n, s in zip(shape, raw.shape)]

    def plane(self, z: int) -> np.ndarray:
        source = self.raw[self.maps[0][z]]
        return np.take(np.take(source, self.maps[1], axis=0), self.maps[2], axis=1)

    def slab(self, z0: int, depth: int) -> np.ndarray:
        out = np.empty((depth, *self.shape[1:]), self.raw.dtype)
        for i in range(depth):
            out[i] = self.plane(z0 + i)
        return out


def load_source(path: Path, dataset: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The real volume (read whole: Lucchi++ is 130 MB) and its voxel size in µm (1 µm if unrecorded)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f[dataset][...]
        voxel = (1.0, 1.0, 1.0)
        value = f.attrs.get("voxel_size_zyx_nm")
        if isinstance(value, bytes):
            value = value.decode()
        try:
            nm = json.loads(value) if isinstance(value, str) else value
            if nm and all(v for v in nm):
                voxel = tuple(float(v) * 1e-3 for v in nm)
        except (TypeError, ValueError):
            pass
    return raw, voxel  # type: ignore[return-value]


def input_path(scratch: Path, shape, fmt: str, stem: str) -> Path:
    return scratch / "inputs" / f"{stem}_{shape_key(shape)}{EXTENSIONS[fmt]}"


def write_tiff(path: Path, tiler: Tiler, voxel) -> None:
    """ImageJ hyperstack, one uncompressed page per z-plane written plane by plane, contiguous; resolution
    in µm (tifffile writes files over 4 GB ImageJ's way, with a single IFD)."""
    import tifffile

    nbytes = math.prod(tiler.shape) * tiler.raw.dtype.itemsize
    tifffile.imwrite(
        path,
        (tiler.plane(z) for z in range(tiler.shape[0])),
        shape=tiler.shape,
        dtype=tiler.raw.dtype,
        imagej=True,
        contiguous=True,
        truncate=nbytes > 2**32 - 2**25,  # what tifffile would fall back to anyway, without the warning
        resolution=(1.0 / voxel[2], 1.0 / voxel[1]),
        metadata={"spacing": voxel[0], "unit": "um", "axes": "ZYX"},
    )


def write_hdf5(path: Path, tiler: Tiler, voxel) -> None:
    import h5py

    from lib.volumes.store import chunks_for

    chunks = chunks_for(tiler.shape, INPUT_CHUNKS)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", shape=tiler.shape, dtype=tiler.raw.dtype, chunks=chunks)
        ds.attrs["element_size_um"] = np.asarray(voxel, dtype=np.float64)
        for z0 in range(0, tiler.shape[0], chunks[0]):
            depth = min(chunks[0], tiler.shape[0] - z0)
            ds[z0 : z0 + depth] = tiler.slab(z0, depth)


def write_n5(path: Path, tiler: Tiler, voxel) -> None:
    import warnings

    import zarr

    from lib.volumes.store import chunks_for

    chunks = chunks_for(tiler.shape, INPUT_CHUNKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # zarr 2 deprecates N5Store
        store = zarr.N5Store(str(path))
    root = zarr.group(store=store, overwrite=True)
    array = root.create_dataset("raw", shape=tiler.shape, chunks=chunks, dtype=tiler.raw.dtype)  # default compressor
    array.attrs["pixelResolution"] = {"unit": "um", "dimensions": [voxel[2], voxel[1], voxel[0]]}
    for z0 in range(0, tiler.shape[0], chunks[0]):
        depth = min(chunks[0], tiler.shape[0] - z0)
        array[z0 : z0 + depth] = tiler.slab(z0, depth)


WRITERS = {"tiff": write_tiff, "hdf5": write_hdf5, "n5": write_n5}


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


class Source:
    """The real volume the inputs are tiled from, loaded on first use."""

    def __init__(self, path: Path, dataset: str):
        self.path, self.dataset = path, dataset
        self._loaded = None

    def get(self):
        if self._loaded is None:
            self._loaded = load_source(self.path, self.dataset)
        return self._loaded

    @property
    def stem(self) -> str:
        return self.path.stem.split("_")[0]


def ensure_input(scratch: Path, source: Source, shape, fmt: str) -> tuple[Path, float | None]:
    """The input file (built once, reused when present); returns it and the build time (None if reused)."""
    path = input_path(scratch, shape, fmt, source.stem)
    if path.exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    raw, voxel = source.get()
    tmp = path.with_name(f".part-{uuid.uuid4().hex[:6]}-{path.name}")
    t = time.perf_counter()
    try:
        WRITERS[fmt](tmp, Tiler(raw, shape), voxel)
        os.rename(tmp, path)
    finally:
        remove(tmp)
    seconds = time.perf_counter() - t
    print(f"  built {path.name} ({disk_bytes(path) / 1e9:.2f} GB) in {seconds:.0f} s", flush=True)
    return path, seconds


# --- measuring a process -------------------------------------------------------------------------
class TreeSampler:
    """Peak RSS (and its anonymous part, RSS minus file-backed/shared pages) of a process and its
    children, sampled every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.peak_anon = 0
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, int]:
        """RSS per process of the tree, keyed by a short name."""
        import psutil

        out: dict[str, int] = {}
        rss = anon = 0
        try:
            procs = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return out
        for p in procs:
            try:
                m = p.memory_info()
                name = describe_process(p)
            except psutil.Error:
                continue
            rss += m.rss
            anon += m.rss - m.shared
            out[name] = out.get(name, 0) + m.rss
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.last = out
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def describe_process(p) -> str:
    cmd = p.cmdline()
    text = " ".join(cmd)
    if "redis-server" in text:
        return "redis"
    if "lib.jobs.worker" in text:
        return f"worker {cmd[cmd.index('--queues') + 1] if '--queues' in cmd else ''}".strip()
    if "start_server" in text:
        return "API server"
    if "lib.jobs.embedded" in text:
        return "supervisor (lib.jobs.embedded)"
    return os.path.basename(cmd[0]) if cmd else p.name()


def run_measured(spec: dict, log: Path) -> dict:
    """Run ``spec`` in a fresh ``python benchmarks/volume_store.py _measure_child`` process; its JSON result
    plus process wall time, psutil peaks and ``ru_maxrss`` (wait4, this child only)."""
    env = {**os.environ, "PYTHONPATH": str(APP)}
    cmd = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, json.dumps(spec)]
    with open(log, "w") as out:
        t = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(process.pid).start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - t
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("{") and '"result"' in line]
    if process.returncode != 0 or not lines:
        tail = "\n".join(text.splitlines()[-8:])
        return {"error": f"exit {process.returncode}: {tail[-600:]}", "process_wall_s": wall}
    result = json.loads(lines[-1])["result"]
    result.update(
        process_wall_s=wall,
        peak_rss_psutil=sampler.peak_rss,
        peak_anon_psutil=sampler.peak_anon,
        ru_maxrss=usage.ru_maxrss * 1024,  # KiB on Linux
    )
    return result


def child_main(spec: dict) -> None:
    """In the fresh process: build the datastore as the server does and time one add_image/register_volume."""
    import resource

    from lib.configs.registry import SPECS
    from lib.datastore import MicroscopyDatastore
    from lib.db.engine import upgrade
    from lib.db.store import Database

    workdir = Path(spec["workdir"])
    (workdir / "datastore").mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(workdir / 'axonseg.db').resolve()}"  # what the server uses (database_url)
    upgrade(url)
    ds = MicroscopyDatastore(
        str(workdir / "datastore"),
        str(workdir),
        Database(url),
        SPECS,
        region_size=tuple(spec["region_size"]),
        volume_roots=spec.get("volume_roots", []),
    )
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    if spec["mode"] == "register":
        image_id = ds.register_volume(spec["image_id"], spec["path"])
    else:
        image_id = ds.add_image(spec["image_id"], spec["path"], {})
    seconds = time.perf_counter() - t
    info = ds.get_image_info(image_id)
    result = {
        "seconds": seconds,
        "rss_after_imports": after_imports,
        "ru_maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "image_id": image_id,
        "shape": info["shape"],
        "regions": info.get("regions"),
        "voxel_size_um": info.get("voxel_size_um"),
        "modality": info.get("modality"),
        "stored_bytes": disk_bytes(Path(ds.store.group_path(image_id))),
    }
    print(json.dumps({"result": result}), flush=True)


# --- part 1: ingest ------------------------------------------------------------------------------
def handout_workdir(scratch: Path, shape, args) -> Path:
    region = args.region_size.replace(",", "x")
    return scratch / "work" / f"handout-{shape_key(shape)}-{args.handout_source}-r{region}"


def fits(scratch: Path, shape, formats, source: Source, keep: bool) -> str | None:
    """None if the inputs still to build, one ingest and (``keep``) the kept hand-out store fit on disk."""
    nbytes = math.prod(shape) * 1  # uint8 inputs; uint16 sources double it
    if source.path.exists():
        import h5py

        with h5py.File(source.path, "r") as f:
            nbytes *= f[source.dataset].dtype.itemsize
    missing = sum(nbytes for fmt in formats if not input_path(scratch, shape, fmt, source.stem).exists())
    needed = missing + int(1.2 * nbytes) * (2 if keep else 1) + 2 * 1024**3
    free = shutil.disk_usage(scratch).free
    if needed > free:
        return f"needs ~{needed / 1e9:.1f} GB of disk in {scratch}, {free / 1e9:.1f} GB free"
    return None


def part_ingest(args, source: Source, results: dict, command: str) -> None:
    section = results.setdefault("ingest", {"rows": {}, "skipped": {}, "builds": {}})
    largest = max(args.sizes)
    for size in args.sizes:
        shape = shape_for(size)
        key = shape_key(shape)
        keep = size == largest and args.handout_source == "ingested" and "hdf5" in args.formats
        reason = fits(args.scratch, shape, args.formats, source, keep)
        if reason:
            print(f"skipping {key}: {reason}", flush=True)
            section["skipped"][key] = {"gvox": size, "reason": reason, "date": time.strftime("%Y-%m-%d")}
            continue
        section["skipped"].pop(key, None)
        print(f"ingest {key} ({math.prod(shape) / 1e9:.3f} Gvox)", flush=True)
        for fmt in args.formats:
            path, build_s = ensure_input(args.scratch, source, shape, fmt)
            if build_s is not None:
                section["builds"][f"{key}-{fmt}"] = {"seconds": build_s, "bytes": disk_bytes(path)}
            modes = [("add", fmt)] + ([("register", "n5-register")] if fmt == "n5" else [])
            for mode, label in modes:
                kept = keep and fmt == "hdf5" and mode == "add"
                workdir = handout_workdir(args.scratch, shape, args) if kept else args.scratch / "work" / "ingest"
                remove(workdir)
                workdir.mkdir(parents=True)
                spec = {
                    "mode": mode,
                    "workdir": str(workdir),
                    "path": str(path),
                    "image_id": f"{source.stem}_{key}",
                    "region_size": [int(v) for v in args.region_size.split(",")],
                    "volume_roots": [str(path.parent)],
                }
                row = run_measured(spec, args.scratch / f"ingest-{key}-{label}.log")
                row.update(
                    gvox=math.prod(shape) / 1e9,
                    shape=list(shape),
                    format=label,
                    input_bytes=disk_bytes(path),
                    date=time.strftime("%Y-%m-%d"),
                    command=command,
                )
                if kept and "error" not in row:
                    write_marker(workdir, row)
                elif not kept:
                    remove(workdir)
                section["rows"][f"{key}-{label}"] = row
                print(f"  {label}: {summary_ingest(row)}", flush=True)


def summary_ingest(row: dict) -> str:
    if "error" in row:
        return f"ERROR {row['error'][-300:]}"
    peak = max(row["peak_rss_psutil"], row["ru_maxrss"])
    return (
        f"{row['seconds']:.1f} s, {math.prod(row['shape']) / row['seconds'] / 1e6:.0f} Mvox/s, "
        f"peak RSS {row['peak_rss_psutil'] / 1e9:.2f} GB (psutil) / {row['ru_maxrss'] / 1e9:.2f} GB (ru_maxrss), "
        f"anon {row['peak_anon_psutil'] / 1e9:.2f} GB, {row['regions']} regions, "
        f"goal {'met' if peak <= RSS_GOAL else 'NOT met'}"
    )


def write_marker(workdir: Path, row: dict) -> None:
    (workdir / "handout.json").write_text(json.dumps({"image_id": row["image_id"], "ingest": row}))


# --- servers -------------------------------------------------------------------------------------
def start_server(kind: str, workdir: Path, port: int, conf: list[tuple[str, str]], env_extra: dict | None = None):
    from annotators import start

    return start(kind, workdir, port, conf, env_extra)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- part 2: region hand-out ---------------------------------------------------------------------
def prepare_handout(args, source: Source) -> tuple[Path, str, tuple[int, int, int]]:
    """A work folder whose datastore holds the largest volume (ingested, or the N5 registered in place)."""
    sizes = sorted(args.sizes, reverse=True)
    for size in sizes:
        shape = shape_for(size)
        workdir = handout_workdir(args.scratch, shape, args)
        marker = workdir / "handout.json"
        if marker.exists():
            return workdir, json.loads(marker.read_text())["image_id"], shape
        fmt = "hdf5" if args.handout_source == "ingested" else "n5"
        reason = fits(args.scratch, shape, [fmt], source, args.handout_source == "ingested")
        if reason:
            print(f"hand-out: skipping {shape_key(shape)}: {reason}", flush=True)
            continue
        path, _ = ensure_input(args.scratch, source, shape, fmt)
        remove(workdir)
        workdir.mkdir(parents=True)
        spec = {
            "mode": "add" if args.handout_source == "ingested" else "register",
            "workdir": str(workdir),
            "path": str(path),
            "image_id": f"{source.stem}_{shape_key(shape)}",
            "region_size": [int(v) for v in args.region_size.split(",")],
            "volume_roots": [str(path.parent)],
        }
        print(f"hand-out: preparing {shape_key(shape)} ({spec['mode']} {path.name})", flush=True)
        row = run_measured(spec, args.scratch / f"handout-prepare-{shape_key(shape)}.log")
        if "error" in row:
            raise RuntimeError(f"preparing the hand-out volume failed: {row['error']}")
        write_marker(workdir, row)
        return workdir, row["image_id"], shape
    raise RuntimeError("no size fits on disk for the hand-out part")


def part_handout(args, source: Source, results: dict, command: str) -> None:
    import requests
    from annotators import free_port, slicer_client, stop

    workdir, image_id, shape = prepare_handout(args, source)
    shutil.rmtree(workdir / "views", ignore_errors=True)  # cut every crop afresh
    port = free_port()
    conf = [("region_size", args.region_size)]
    env = {"AXONSEG_VOLUME_ROOTS": str(args.scratch / "inputs")}
    print(f"hand-out: starting axonseg on {workdir}", flush=True)
    process = start_server("axonseg", workdir, port, conf, env)
    url = f"http://127.0.0.1:{port}"
    Client = slicer_client()
    tmp = Path(tempfile.mkdtemp(prefix="handout-", dir=args.scratch))
    run = uuid.uuid4().hex[:6]  # leases of earlier runs belong to other client ids
    rows, errors = [], []
    sampler = TreeSampler(process.pid)
    try:
        idle = sampler.sample()
        sampler.peak_rss = sampler.peak_anon = 0
        info = requests.get(f"{url}/datastore/image/info", params={"image": image_id}, timeout=60).json()
        sampler.start()
        for i in range(args.handouts):
            client = Client(url, tmpdir=str(tmp), client_id=f"handout-{run}-{i}")
            t0 = time.perf_counter()
            try:
                sample = client.next_sample("random", {})
                t1 = time.perf_counter()
                if not sample.get("id"):
                    raise RuntimeError(f"next_sample returned {sample}")
                # what Slicer does when 'path' is not local: download the region
                r = requests.get(f"{url}/datastore/image", params={"image": sample["id"]}, timeout=120)
                r.raise_for_status()
                body = r.content
                t2 = time.perf_counter()
                rows.append(
                    {
                        "id": sample["id"],
                        "shape": sample.get("shape"),
                        "next_sample_s": t1 - t0,
                        "download_s": t2 - t1,
                        "pair_s": t2 - t0,
                        "bytes": len(body),
                    }
                )
            except Exception as e:
                errors.append(str(e)[:300])
        sampler.stop()
    finally:
        stop(process)
        shutil.rmtree(tmp, ignore_errors=True)
    pairs = [r["pair_s"] for r in rows]
    warm = rows[1:]  # the API's first hand-out after start pays one-off costs (lazy imports)
    warm_pairs = [r["pair_s"] for r in warm]
    shapes = sorted({shape_key(r["shape"]) for r in rows if r["shape"]})
    results["handout"] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "image_id": image_id,
        "image_shape": list(shape),
        "source": args.handout_source,
        "regions": info.get("regions"),
        "region_shapes": shapes,
        "handouts": args.handouts,
        "done": len(rows),
        "distinct": len({r["id"] for r in rows}),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "pair_p50_s": pct(pairs, 50),
        "pair_p99_s": pct(pairs, 99),
        "pair_max_s": max(pairs) if pairs else float("nan"),
        "warm_p50_s": pct(warm_pairs, 50),
        "warm_p99_s": pct(warm_pairs, 99),
        "warm_max_s": max(warm_pairs) if warm_pairs else float("nan"),
        "next_sample_p50_s": pct([r["next_sample_s"] for r in warm], 50),
        "next_sample_p99_s": pct([r["next_sample_s"] for r in warm], 99),
        "download_p50_s": pct([r["download_s"] for r in warm], 50),
        "download_p99_s": pct([r["download_s"] for r in warm], 99),
        "mean_mb": float(np.mean([r["bytes"] for r in rows]) / 1e6) if rows else float("nan"),
        "idle_rss": idle,
        "peak_rss_during": sampler.peak_rss,
        "last_rss": sampler.last,
        "first_s": pairs[0] if pairs else float("nan"),
    }
    h = results["handout"]
    print(
        f"hand-out: {h['done']}/{h['handouts']} from {h['regions']} regions of {shape_key(shape)}, region "
        f"{', '.join(shapes)}: p50 {h['pair_p50_s']:.3f} s, p99 {h['pair_p99_s']:.3f} s, max {h['pair_max_s']:.3f} s "
        f"(first {h['first_s']:.3f} s; without it p50 {h['warm_p50_s']:.3f} s, p99 {h['warm_p99_s']:.3f} s, "
        f"max {h['warm_max_s']:.3f} s), errors {h['errors']} {h['error_examples']}",
        flush=True,
    )


# --- part 3: /info/ under load -------------------------------------------------------------------
def prepare_info_inputs(args, source: Source) -> tuple[Path, Path, Path]:
    """The sample image, a 64x512x512 real TIFF to upload and a label of the sample's shape."""
    from lib.transforms.io import Volume, read_volume, write_volume

    sample = ROOT / "sample_data" / f"{SAMPLE_IMAGE}.nrrd"
    folder = args.scratch / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    upload = folder / f"upload_{source.stem}_{shape_key(UPLOAD_SHAPE)}.tif"
    if not upload.exists():
        raw, voxel = source.get()
        tmp = upload.with_name(f".part-{upload.name}")
        write_tiff(tmp, Tiler(raw, UPLOAD_SHAPE), voxel)
        os.rename(tmp, upload)
    label = folder / f"{SAMPLE_IMAGE}_label.nrrd"
    if not label.exists():
        volume = read_volume(str(sample))
        mask = (volume.array > np.percentile(volume.array, 97)).astype(np.uint8)  # bright voxels: axon-like
        write_volume(str(label), Volume(mask, volume.spacing, volume.origin))
    return sample, upload, label


def info_load(url: str, kind: str, upload: Path, label: Path, seconds: float, tmp: Path) -> dict:
    import requests
    from annotators import slicer_client

    Client = slicer_client()
    stop_at = time.time() + seconds
    info_ms: list[float] = []
    counts = {"infer": 0, "upload": 0, "save": 0}
    late = {"infer": 0, "upload": 0, "save": 0}  # finished after the window (in flight at its end)
    errors: list[str] = []
    lock = threading.Lock()

    def loop(name: str, n: int, action) -> None:
        client = Client(url, tmpdir=str(tmp), client_id=f"{name}{n}")
        i = 0
        while time.time() < stop_at:
            try:
                action(client, n, i)
                with lock:
                    (counts if time.time() <= stop_at else late)[name] += 1
            except Exception as e:
                with lock:
                    errors.append(f"{name}: {str(e)[:200]}")
                time.sleep(0.5)
            i += 1

    def infer(client, n, i):
        out, _ = client.infer("axon", SAMPLE_IMAGE, {})
        if out and os.path.exists(out):
            os.remove(out)

    def upload_once(client, n, i):
        image_id = f"upload-{kind}-{n}-{i}-{uuid.uuid4().hex[:4]}"
        client.upload_image(str(upload), image_id, {})
        requests.delete(f"{url}/datastore/", params={"id": image_id}, timeout=300).raise_for_status()

    def save(client, n, i):
        client.save_label(SAMPLE_IMAGE, str(label), tag="final", params={"label_info": [{"name": "axon", "idx": 1}]})

    def poller() -> None:
        while time.time() < stop_at:
            t = time.perf_counter()
            try:
                requests.get(f"{url}/info/", timeout=120).raise_for_status()
                with lock:
                    info_ms.append((time.perf_counter() - t) * 1e3)
            except Exception as e:
                with lock:
                    errors.append(f"info: {str(e)[:200]}")
            time.sleep(0.2)

    threads = [threading.Thread(target=loop, args=("infer", n, infer)) for n in range(4)]
    threads += [threading.Thread(target=loop, args=("upload", n, upload_once)) for n in range(2)]
    threads += [threading.Thread(target=loop, args=("save", n, save)) for n in range(2)]
    threads.append(threading.Thread(target=poller))
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "elapsed_s": time.time() - started,
        "info_p50_ms": pct(info_ms, 50),
        "info_p99_ms": pct(info_ms, 99),
        "info_max_ms": max(info_ms) if info_ms else float("nan"),
        "info_n": len(info_ms),
        "infers": counts["infer"],
        "uploads": counts["upload"],
        "saves": counts["save"],
        "late": late,
        "errors": len(errors),
        "error_examples": sorted({e[:160] for e in errors})[:4],
    }


def part_info(args, source: Source, results: dict, command: str) -> None:
    import requests
    from annotators import free_port, stop

    sample, upload, label = prepare_info_inputs(args, source)
    mb = max(64, math.ceil(upload.stat().st_size / 1e6) * 4)
    section = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "seconds": args.seconds,
        "max_upload_mb": mb,
        "upload_bytes": upload.stat().st_size,
        "servers": {},
    }
    for kind in args.servers:
        workdir = Path(tempfile.mkdtemp(prefix=f"info-{kind}-", dir=args.scratch))
        (workdir / "datastore").mkdir()
        shutil.copy(sample, workdir / "datastore" / sample.name)
        conf = [("max_upload_mb", str(mb))]
        if kind == "axonseg":
            conf.append(("retrain_after_labels", "0"))  # stock never retrains on a save either
        port = free_port()
        print(f"info: starting {kind}", flush=True)
        process = start_server(kind, workdir, port, conf)
        url = f"http://127.0.0.1:{port}"
        try:
            requests.post(f"{url}/infer/axon?image={SAMPLE_IMAGE}", timeout=600).raise_for_status()  # warm up
            idle = TreeSampler(process.pid).sample()
            result = info_load(url, kind, upload, label, args.seconds, workdir)
            result["idle_rss"] = idle
        except Exception as e:
            result = {"error": str(e)[:500]}
        finally:
            stop(process)
            shutil.rmtree(workdir, ignore_errors=True)
        section["servers"][kind] = result
        print(f"info: {kind}: {result}", flush=True)
    results["info"] = section


# --- the report ----------------------------------------------------------------------------------
def gb(value) -> str:
    return f"{value / 1e9:.2f} GB"


def fmt_bytes(value) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.1f} MB"


def completed(r: dict, name: str) -> str:
    """Requests completed in the window, with those that finished after it."""
    late = r.get("late", {}).get(name)
    return f"{r[name + 's']}" + (f" (+{late} late)" if late else "")


def render(results: dict) -> str:
    lines = [
        "# Volume store at scale: ingest, region hand-out and /info/ under load",
        "",
        f"Machine: {results.get('machine', '?')} ({results.get('device', 'cpu')}). Written by "
        "`benchmarks/volume_store.py`; raw results in the JSON next to this file. Each part records the "
        "command and date it was measured with.",
        "",
        f"Inputs are real data: `{results.get('source', '?')}` mirror-tiled (a b c c b a ...) so edges join, "
        "to power-of-two shapes of the requested size (never noise).",
    ]
    ingest = results.get("ingest")
    lines += ["", "## 1. Ingest", ""]
    if not ingest or not ingest.get("rows"):
        lines.append("Not measured yet (`--parts ingest`).")
    else:
        commands = sorted({(r["date"], r["command"]) for r in ingest["rows"].values()})
        for date, cmd in commands:
            lines.append(f"Measured {date} with `{cmd}`.")
        lines += [
            "",
            "Each row is one `MicroscopyDatastore.add_image` (or `register_volume`) in a fresh Python process, "
            "into an empty work folder (SQLite index, OME-Zarr store: zstd-3 bitshuffle chunks plus the pyramid). "
            "Inputs: TIFF = ImageJ hyperstack, uncompressed, contiguous, one page per plane (over 4 GB tifffile "
            "writes ImageJ's single-IFD layout), read through a memory map; HDF5 = h5py, 64x256x256 chunks, "
            "uncompressed, `element_size_um`; N5 = zarr 2 `N5Store`, 64x256x256 chunks, default compressor "
            "(blosc lz4), `pixelResolution`. *n5-register* registers the N5 in place (only the intensity "
            "statistics are computed; no voxels are copied).",
            "",
            "*add_image* is the call itself; *process* adds interpreter start-up and imports. Peak RSS: psutil "
            "sampled every 0.1 s (process and children), its anonymous part (RSS minus file-backed pages, e.g. "
            "a memory-mapped TIFF), and the exact `ru_maxrss` of that process (wait4). *After imports* is the RSS "
            "before the call (torch, MONAI, zarr...). Goal: peak RSS <= 1.5 GB whatever the size, judged on the "
            "larger of the two peaks.",
            "",
            "| volume | Gvox | format | input | stored | add_image | Mvox/s | process | peak RSS (psutil) | anon "
            "| ru_maxrss | after imports | regions | RSS <= 1.5 GB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        order = {f: i for i, f in enumerate([*FORMATS, "n5-register"])}
        rows = sorted(ingest["rows"].values(), key=lambda r: (math.prod(r["shape"]), order.get(r["format"], 9)))
        for r in rows:
            head = f"| {shape_key(r['shape'])} | {r['gvox']:.3f} | {r['format']} | {fmt_bytes(r['input_bytes'])} |"
            if "error" in r:
                lines.append(f"{head} error: {r['error'][-200:].replace('|', '/').replace(chr(10), ' ')} |||||||||")
                continue
            peak = max(r["peak_rss_psutil"], r["ru_maxrss"])
            lines.append(
                f"{head} {fmt_bytes(r['stored_bytes'])} | {r['seconds']:.1f} s | "
                f"{math.prod(r['shape']) / r['seconds'] / 1e6:.0f} | {r['process_wall_s']:.1f} s | "
                f"{gb(r['peak_rss_psutil'])} | {gb(r['peak_anon_psutil'])} | {gb(r['ru_maxrss'])} | "
                f"{gb(r['rss_after_imports'])} | {r['regions'] or 1} | {'met' if peak <= RSS_GOAL else '**not met**'} |"
            )
        for key, s in sorted(ingest.get("skipped", {}).items()):
            lines.append(f"\nSkipped {key} ({s['gvox']} Gvox, {s['date']}): {s['reason']}.")
        if ingest.get("builds"):
            builds = ", ".join(
                f"{k} {v['seconds']:.1f} s" for k, v in sorted(ingest["builds"].items(), key=lambda kv: kv[0])
            )
            lines.append(f"\nBuilding the inputs (once, reused while they exist in the scratch folder): {builds}.")
    handout = results.get("handout")
    lines += ["", "## 2. Region hand-out from the largest volume", ""]
    if not handout:
        lines.append("Not measured yet (`--parts handout`).")
    else:
        h = handout

        def verdict(p99: float) -> str:
            return "met" if p99 < HANDOUT_GOAL_S and not h["errors"] else "**not met**"

        source = "ingested into the store (from the HDF5)" if h["source"] == "ingested" else "N5 registered in place"
        lines += [
            f"Measured {h['date']} with `{h['command']}`.",
            "",
            f"The real axonseg stack (`python -m lib.jobs.embedded`: embedded Redis, infer and train workers, API) "
            f"on a work folder holding `{h['image_id']}` ({shape_key(h['image_shape'])}, {source}, "
            f"{h['regions']} regions). {h['handouts']} real 3D Slicer clients, each with its own `client_id` (so "
            "leases do not block), one after another: `next_sample('random', {})`, then `GET /datastore/image` of "
            "the region (what Slicer does when the returned path is not local; forced here). The crop cache "
            "(`views/`) is emptied before the run, so every region is cut from the chunks on demand. "
            f"Goal: the pair under {HANDOUT_GOAL_S:g} s (judged on p99). The first hand-out after the server "
            "starts is shown apart: it pays one-off costs (the API imports ITK on its first NRRD crop); the "
            "*without the first* row and the next_sample/download split leave it out.",
            "",
            "| hand-outs | region | pairs | p50 | p99 | max | next_sample p50 / p99 | download p50 / p99 "
            "| NRRD | errors | < 1 s (p99) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {h['done']}/{h['handouts']} ({h['distinct']} distinct) | {', '.join(h['region_shapes'])} | all | "
            f"{h['pair_p50_s']:.3f} s | {h['pair_p99_s']:.3f} s | {h['pair_max_s']:.3f} s | | | "
            f"{h['mean_mb']:.1f} MB | {h['errors']} | {verdict(h['pair_p99_s'])} |",
            f"| | | without the first ({h['first_s']:.3f} s) | {h['warm_p50_s']:.3f} s | {h['warm_p99_s']:.3f} s | "
            f"{h['warm_max_s']:.3f} s | {h['next_sample_p50_s']:.3f} / {h['next_sample_p99_s']:.3f} s | "
            f"{h['download_p50_s']:.3f} / {h['download_p99_s']:.3f} s | | | {verdict(h['warm_p99_s'])} |",
        ]
        if h.get("idle_rss"):
            parts = ", ".join(f"{k} {gb(v)}" for k, v in sorted(h["idle_rss"].items()))
            lines.append(
                f"\nRSS of the idle stack before the hand-outs: {parts}; whole tree at most "
                f"{gb(h['peak_rss_during'])} during them."
            )
        if h["error_examples"]:
            lines.append("\nErrors: " + "; ".join(h["error_examples"]))
    info = results.get("info")
    lines += ["", "## 3. /info/ latency under load, axonseg vs stock MONAI Label", ""]
    if not info:
        lines.append("Not measured yet (`--parts info`).")
    else:
        lines += [
            f"Measured {info['date']} with `{info['command']}`.",
            "",
            f"Both servers on the same sample datastore (`sample_data/{SAMPLE_IMAGE}.nrrd`, 64x128x128 light-sheet), "
            f"`--conf max_upload_mb {info['max_upload_mb']}`, for {info['seconds']:g} s: 4 Slicer clients looping "
            f"`infer('axon', '{SAMPLE_IMAGE}')`; 2 uploaders looping `PUT /datastore/?image=<unique id>` of a "
            f"{shape_key(UPLOAD_SHAPE)} real uint8 TIFF ({info['upload_bytes'] / 1e6:.0f} MB, mirror-tiled from "
            "the same source) then `DELETE /datastore/?id=`; 2 label savers looping `PUT /datastore/label` of a "
            "label of the image's shape (`label_info` names segment 1 `axon`); one poller timing `GET /info/` "
            "every 0.2 s. axonseg runs with `--conf retrain_after_labels 0` (stock never retrains on a save, and "
            "a fine-tuning run would otherwise share the 2 cores). Counts are completed requests; errors counted "
            "apart; requests still in flight when the window closes are waited for and shown as *late*, not "
            f"counted. Goal: axonseg /info/ p99 < {INFO_GOAL_MS:g} ms.",
            "",
            "| server | /info/ p50 | /info/ p99 | /info/ max | /info/ answers | infers | uploads | label saves "
            "| errors | idle RSS: API / all |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, r in info["servers"].items():
            if "error" in r:
                lines.append(f"| {kind} | error: {r['error'][:200].replace('|', '/')} |||||||||")
                continue
            rss = r.get("idle_rss") or {}
            idle = f"{gb(rss.get('API server', 0))} / {gb(sum(rss.values()))}" if rss else "?"
            lines.append(
                f"| {kind} | {r['info_p50_ms']:.0f} ms | {r['info_p99_ms']:.0f} ms | {r['info_max_ms']:.0f} ms | "
                f"{r['info_n']} | {completed(r, 'infer')} | {completed(r, 'upload')} | {completed(r, 'save')} | "
                f"{r['errors']} | {idle} |"
            )
        axonseg = info["servers"].get("axonseg", {})
        if "info_p99_ms" in axonseg:
            met = axonseg["info_p99_ms"] < INFO_GOAL_MS
            lines.append(f"\naxonseg /info/ p99 < {INFO_GOAL_MS:g} ms: {'met' if met else '**not met**'}.")
        for kind, r in info["servers"].items():
            if r.get("idle_rss"):
                parts = ", ".join(f"{k} {gb(v)}" for k, v in sorted(r["idle_rss"].items()))
                lines.append(f"\nIdle RSS ({kind}, after one warm-up infer): {parts}.")
            if r.get("error_examples"):
                lines.append(f"\nErrors ({kind}): " + "; ".join(r["error_examples"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["ingest", "handout", "info"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--sizes", nargs="+", type=float, default=[0.25, 1, 4], help="Gvox")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--handouts", type=int, default=40)
    parser.add_argument("--handout-source", choices=["ingested", "registered"], default="ingested")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--servers", nargs="+", default=["axonseg", "stock"])
    parser.add_argument("--region-size", default="64,256,256", help="z,y,x (the server's --conf region_size)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lucchi_pp_train.h5")
    parser.add_argument("--dataset", default="raw")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "axonseg-volume-store")
    parser.add_argument("--out", type=Path, default=None, help="report (.md); the JSON goes next to it")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))  # annotators' helpers

    from lib.machine import default_device, describe_machine

    device = default_device()
    out = args.out or ROOT / "benchmarks" / "reports" / f"volume_store_{device}.md"
    raw_json = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    args.scratch = args.scratch.resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    results = json.loads(raw_json.read_text()) if raw_json.exists() else {}
    results.update(machine=describe_machine(device), device=device, source=args.data.name)
    command = shlex.join([".venv/bin/python", "benchmarks/volume_store.py", *sys.argv[1:]])
    source = Source(args.data, args.dataset)

    def save() -> None:
        raw_json.write_text(json.dumps(results, indent=1, default=float))
        out.write_text(render(results))

    runners = {"ingest": part_ingest, "handout": part_handout, "info": part_info}
    for name in ("ingest", "handout", "info"):
        if name in args.parts:
            t = time.time()
            runners[name](args, source, results, command)
            print(f"{name}: {time.time() - t:.0f} s", flush=True)
            save()
    print(out.read_text())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
        child_main(json.loads(sys.argv[2]))
    else:
        main()
