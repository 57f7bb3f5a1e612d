"""Manage the built-in users from a shell on the server (the database the API uses; DATABASE_URL wins):

    PYTHONPATH=apps/axonseg python -m lib.users add NAME --role annotator|trainer|admin --workdir work
    PYTHONPATH=apps/axonseg python -m lib.users passwd NAME --workdir work
    PYTHONPATH=apps/axonseg python -m lib.users list --workdir work
    PYTHONPATH=apps/axonseg python -m lib.users remove NAME --workdir work

Passwords are read from stdin (asked twice on a terminal), never from the command line, where other users
of the machine and the shell history would see them.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from .auth.accounts import Accounts
from .auth.identity import ROLES
from .db.engine import database_url, upgrade
from .db.store import Database
from .errors import AxonSegError


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise SystemExit("the passwords differ; nothing changed")
    return password


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", default="work", help="the server's workdir (its SQLite database)")
    parser = argparse.ArgumentParser(prog="python -m lib.users", description="axonseg's built-in users")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", parents=[common], help="add a user; the password is read from stdin")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    passwd = sub.add_parser("passwd", parents=[common], help="set a user's password (read from stdin)")
    passwd.add_argument("name")
    sub.add_parser("list", parents=[common], help="users and roles")
    remove = sub.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name")
    args = parser.parse_args(argv)

    url = database_url(args.workdir)
    upgrade(url)
    accounts = Accounts(Database(url))
    try:
        if args.command == "add":
            accounts.add(args.name, _read_password(), args.role)
            print(f"added {args.role} '{args.name}'")
        elif args.command == "passwd":
            accounts.set_password(args.name, _read_password())
            print(f"new password for '{args.name}'")
        elif args.command == "list":
            for user in accounts.db.users():
                print(f"{user.name}\t{user.role}\t{user.created_at:%Y-%m-%d}")
        else:
            accounts.remove(args.name)
            print(f"removed '{args.name}'")
    except AxonSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
