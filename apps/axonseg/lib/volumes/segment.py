"""Segment a whole volume from the command line, through a running server, with a progress bar:

    PYTHONPATH=apps/axonseg python -m lib.volumes.segment IMAGE MODEL [--server URL] [--param KEY VALUE ...]

The same as ``POST /volumes/{image}/segment/{model}``: running it again resumes the job. Ctrl+C stops
following, not the job (``--cancel-on-interrupt`` cancels it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import requests
from tqdm import tqdm


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Whole-volume segmentation on the server's workers")
    parser.add_argument("image")
    parser.add_argument("model")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    example = '--param threshold 0.5 --param roi \'{"offset": [0, 0, 0], "shape": [64, 512, 512]}\''
    parser.add_argument(
        "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help=f"an option, e.g. {example}"
    )
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--cancel-on-interrupt", action="store_true")
    args = parser.parse_args(argv)
    params = {key: _value(value) for key, value in args.param}
    reply = requests.post(f"{args.server}/volumes/{args.image}/segment/{args.model}", json=params, timeout=60)
    if reply.status_code >= 400:
        print(f"error {reply.status_code}: {reply.json().get('detail', reply.text)}", file=sys.stderr)
        return 1
    job = reply.json()
    print(f"job {job['id']}: {job['progress']['blocks_total']} blocks of {job['plan']['block']} voxels")
    bar = tqdm(total=job["progress"]["total"], unit="block", initial=job["progress"]["done"])
    try:
        while job["status"] == "RUNNING":
            time.sleep(args.poll_s)
            job = requests.get(f"{args.server}/jobs/{job['id']}", timeout=60).json()
            progress = job["progress"]
            bar.update(progress["done"] - bar.n)
            rate = progress["voxels_per_s"]
            bar.set_postfix_str(
                f"{job['step']}" + (f", {rate / 1e6:.2f} Mvox/s" if rate else "")
                + (f", ETA {progress['eta_s']:.0f} s" if progress.get("eta_s") else "")
            )  # fmt: skip
    except KeyboardInterrupt:
        if args.cancel_on_interrupt:
            requests.delete(f"{args.server}/jobs/{job['id']}", timeout=60)
            print(f"\ncancelled {job['id']}")
        else:
            print(f"\nstopped following; the job goes on (GET {args.server}/jobs/{job['id']})")
        return 130
    finally:
        bar.close()
    if job["status"] != "DONE":
        print(f"job {job['id']} {job['state']}: {job['error']}", file=sys.stderr)
        return 1
    print(f"done: {(job['summary'] or {}).get('objects')} objects; {args.server}{job['output']}")
    print(f"view: {args.server}/viewer/{args.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
