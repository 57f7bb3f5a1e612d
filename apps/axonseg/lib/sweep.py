"""A post-processing sweep on the select split of a shipped model (``lib.protocol.sweep``), one JSON row
per combination, best first:

    PYTHONPATH=apps/axonseg python -m lib.sweep synapse threshold threshold=0.5,0.7 min_size=200,400
"""

from __future__ import annotations

import argparse
import json
import os

from .configs.registry import MODEL_DIR, SPECS
from .networks import load_weights
from .protocol import sweep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SPECS))
    parser.add_argument("method")
    parser.add_argument("grid", nargs="*", help="option=v1,v2,... (numbers)")
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    args = parser.parse_args(argv)
    grid = {name: [float(v) for v in values.split(",")] for name, values in (g.split("=", 1) for g in args.grid)}
    network, _ = load_weights(os.path.join(MODEL_DIR, f"{args.model}.pt"))
    for row in sweep(SPECS[args.model], network, args.data_dir, args.method, grid):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
