"""Several annotators at once: axonseg (queue + workers) vs stock MONAI Label (in-process), same network.

Eight real 3D Slicer clients (``MONAILabelClient`` from the monailabel wheel) loop over
``infer(mitochondria)`` on 32x256x256 held-out Lucchi++ crops for 60 s, while a ninth client polls
``GET /info/`` every 0.2 s. Each server runs on its own, one after the other:

- ``axonseg``: ``python -m lib.jobs.embedded`` (what ``make serve`` runs): embedded Redis, one infer
  worker, one train worker, the API server;
- ``stock``: ``monailabel start_server --app benchmarks/stock_app`` (``BasicInferTask``, inline).

    .venv/bin/python benchmarks/annotators.py [--seconds 60 --clients 8]

writes ``benchmarks/reports/annotators_<device>.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "axonseg"))

from lib.machine import describe_machine  # noqa: E402
from lib.transforms.io import Volume, read_volume, write_volume  # noqa: E402

SHAPE = (32, 256, 256)


def slicer_client():
    path = Path(sys.prefix) / "monailabel/plugins/slicer/MONAILabel/MONAILabelLib/client.py"
    spec = importlib.util.spec_from_file_location("slicer_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MONAILabelClient


def prepare(studies: Path, data_dir: Path, count: int) -> list[str]:
    """``count`` distinct 32x256x256 crops of Lucchi++'s held-out slab (z >= 133), as NRRD."""
    volume = read_volume(str(data_dir / "lucchi_pp_train.h5"), "raw")
    studies.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        y, x = (i // 2) * 128 % 256, (i % 2) * 256
        crop = volume.array[133 : 133 + SHAPE[0], y : y + SHAPE[1], x : x + SHAPE[2]]
        write_volume(str(studies / f"lucchi_crop{i}.nrrd"), Volume(np.ascontiguousarray(crop), volume.spacing))
        ids.append(f"lucchi_crop{i}")
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    kind: str,
    workdir: Path,
    port: int,
    conf: list[tuple[str, str]] = (),
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``kind`` ("axonseg": the embedded stack, or "stock") on ``workdir/datastore``, with ``--conf`` pairs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "apps" / "axonseg"), "MONAILABEL_PYEXE": sys.executable}
    env.update(env_extra or {})
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)  # the server's SQLite file is <workdir>/axonseg.db
    studies = workdir / "datastore"
    studies.mkdir(parents=True, exist_ok=True)
    if kind == "axonseg":
        cmd = [sys.executable, "-m", "lib.jobs.embedded", "--studies", str(studies), "--workdir", str(workdir)]
    else:
        cmd = [str(Path(sys.executable).parent / "monailabel"), "start_server"]
        cmd += ["--app", str(ROOT / "benchmarks/stock_app"), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf:
        cmd += ["--conf", key, value]
    log = open(workdir / f"{kind}.log", "w")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{url}/info/", timeout=2).status_code == 200:
                time.sleep(15 if kind == "axonseg" else 0)  # workers load their models
                return process
        except requests.RequestException:
            time.sleep(1)
    if process.poll() is None:
        stop(process)
    tail = "\n".join((workdir / f"{kind}.log").read_text().splitlines()[-15:])
    raise RuntimeError(f"{kind} did not start; see {workdir / f'{kind}.log'}:\n{tail}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, 15)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)


def load(url: str, ids: list[str], clients: int, seconds: float, tmp: Path) -> dict:
    Client = slicer_client()
    stop_at = time.time() + seconds
    infer_latencies: list[float] = []
    info_latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def annotator(n: int) -> None:
        client = Client(url, tmpdir=str(tmp), client_id=f"annotator{n}")
        i = n
        while time.time() < stop_at:
            t = time.perf_counter()
            try:
                out, _ = client.infer("mitochondria", ids[i % len(ids)], {})
                os.remove(out)
                with lock:
                    infer_latencies.append(time.perf_counter() - t)
            except Exception as e:
                with lock:
                    errors.append(f"infer: {str(e)[:200]}")
            i += 1

    def info_poller() -> None:
        while time.time() < stop_at:
            t = time.perf_counter()
            try:
                requests.get(f"{url}/info/", timeout=120).raise_for_status()
                info_latencies.append(time.perf_counter() - t)
            except Exception as e:
                errors.append(f"info: {str(e)[:200]}")
            time.sleep(0.2)

    threads = [threading.Thread(target=annotator, args=(n,)) for n in range(clients)]
    threads.append(threading.Thread(target=info_poller))
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {
        "info_p50_ms": pct(info_latencies, 50) * 1e3,
        "info_p99_ms": pct(info_latencies, 99) * 1e3,
        "info_n": len(info_latencies),
        "infer_p50_s": pct(infer_latencies, 50),
        "infer_p99_s": pct(infer_latencies, 99),
        "jobs": len(infer_latencies),
        "jobs_per_s": len(infer_latencies) / elapsed,
        "elapsed_s": elapsed,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "infer_mean_s": statistics.mean(infer_latencies) if infer_latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--servers", nargs="+", default=["axonseg", "stock"])
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for kind in args.servers:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        ids = prepare(workdir / "datastore", args.data_dir, 4)
        port = free_port()
        process = start(kind, workdir, port)
        try:
            requests.post(f"http://127.0.0.1:{port}/infer/mitochondria?image={ids[0]}", timeout=600)  # warm up
            results[kind] = load(f"http://127.0.0.1:{port}", ids, args.clients, args.seconds, workdir)
        finally:
            stop(process)
            shutil.rmtree(workdir, ignore_errors=True)
        print(kind, results[kind], flush=True)

    lines = [
        "# Several annotators at once: axonseg vs stock MONAI Label",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/annotators.py --seconds {args.seconds:g} "
        f"--clients {args.clients}` on {describe_machine()} ({device}).",
        "",
        f"{args.clients} real 3D Slicer clients (`MONAILabelClient` from the monailabel 0.8.5 wheel) loop over "
        f"`infer('mitochondria')` on four {'x'.join(map(str, SHAPE))} crops of Lucchi++'s held-out slab "
        f"(z 133-164) for {args.seconds:g} s; one more client polls `GET /info/` every 0.2 s. Same network and "
        "weights (`apps/axonseg/model/mitochondria.pt`) in both servers.",
        "",
        "- **axonseg**: `python -m lib.jobs.embedded` (what `make serve` runs): embedded Redis, one infer "
        "worker, one train worker, API server; handlers await queued jobs.",
        "- **stock**: `monailabel start_server --app benchmarks/stock_app`: `BasicInferTask` run inline in "
        "the request handler.",
        "",
        "| server | /info/ p50 | /info/ p99 | /info/ answers | infer p50 | infer p99 | jobs | jobs/s | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['info_p50_ms']:.0f} ms | {r['info_p99_ms']:.0f} ms | {r['info_n']} | "
            f"{r['infer_p50_s']:.1f} s | {r['infer_p99_s']:.1f} s | {r['jobs']} | "
            f"{r['jobs_per_s']:.2f} | {r['errors']} |"
        )
    lines += [
        "",
        "Infer latency includes waiting for the one CPU worker: with 8 clients and one worker, each request "
        "waits for the ones ahead of it, so throughput (jobs/s) is bounded by the worker, not the server. "
        "Add infer workers (`docker compose up --scale worker-infer=N`, one per GPU) to raise it.",
    ]
    for kind, r in results.items():
        if r["error_examples"]:
            lines.append(f"\nErrors ({kind}): " + "; ".join(r["error_examples"]))
    out = ROOT / "benchmarks" / "reports" / f"annotators_{device}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
