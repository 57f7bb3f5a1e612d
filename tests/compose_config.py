"""`compose config` for machines without a Compose CLI: the file's YAML (anchors and merge keys resolved),
its variables interpolated as the Compose specification says, and the result validated against the
specification's JSON schema (tests/data/compose-spec.json)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

# $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\})"
)


class InterpolationError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; ``#`` comments and blank lines skipped, one level of quotes removed."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def interpolate(text: str, variables: Mapping[str, str], where: str) -> str:
    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["bare"] or match["name"]
        op, arg = match["op"], match["arg"] or ""
        value = variables.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return interpolate(arg, variables, where) if missing else value
        if op in ("?", ":?"):
            if missing:
                detail = interpolate(arg, variables, where)
                raise InterpolationError(
                    f"error while interpolating {where}: required variable {name} is missing a value: {detail}"
                )
            return value
        if op in ("+", ":+"):
            return "" if missing else interpolate(arg, variables, where)
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node, variables: Mapping[str, str], where: str):
    if isinstance(node, dict):
        return {
            key: _interpolate_tree(value, variables, f"{where}.{key}" if where else key) for key, value in node.items()
        }
    if isinstance(node, list):
        return [_interpolate_tree(value, variables, f"{where}.[]") for value in node]
    if isinstance(node, str):
        return interpolate(node, variables, where)
    return node


def render(compose_file: Path, variables: Mapping[str, str]) -> subprocess.CompletedProcess:
    """What ``compose -f compose_file config`` answers: exit status, the rendered YAML, the error."""
    import jsonschema

    command = ["compose_config.render", str(compose_file)]
    document = yaml.safe_load(compose_file.read_text())
    try:
        rendered = _interpolate_tree(document, variables, "")
    except InterpolationError as e:
        return subprocess.CompletedProcess(
            command, 1, "", str(e).replace("while interpolating .", "while interpolating ")
        )
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(rendered), key=lambda e: list(e.path))
    if errors:
        where = ".".join(str(p) for p in errors[0].path)
        return subprocess.CompletedProcess(command, 15, "", f"validating {compose_file}: {where} {errors[0].message}")
    for name, service in rendered["services"].items():
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            if not (compose_file.parent / path).is_file():
                return subprocess.CompletedProcess(command, 1, "", f"service {name}: env file {path} not found")
    rendered = {key: value for key, value in rendered.items() if not key.startswith("x-")}
    return subprocess.CompletedProcess(command, 0, yaml.safe_dump(rendered, sort_keys=False), "")
