"""Database maintenance:

PYTHONPATH=apps/axonseg python -m lib.db upgrade --workdir work      # apply migrations (DATABASE_URL wins)
PYTHONPATH=apps/axonseg python -m lib.db revision -m "add a column"  # new migration from models.py
"""

from __future__ import annotations

import argparse
import os
import tempfile

from alembic import command

from .engine import alembic_config, database_url, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.db")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="apply every migration to the configured database")
    up.add_argument("--workdir", default="work")
    rev = sub.add_parser("revision", help="autogenerate a migration: models.py vs the migrations so far")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    if args.command == "upgrade":
        os.makedirs(args.workdir, exist_ok=True)
        url = database_url(args.workdir)
        upgrade(url)
        print(f"{url}: up to date")
        return
    with tempfile.TemporaryDirectory() as scratch:  # diff against a fresh database at head
        url = f"sqlite:///{os.path.join(scratch, 'scratch.db')}"
        upgrade(url)
        command.revision(alembic_config(url), message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
