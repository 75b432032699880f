#!/usr/bin/env python3
"""Validates FHIR R4 JSON files with the `fhir.resources` R4B models.

    validate.py DIR [--expect LABEL ...]

Every `*.json` file in DIR (the bodies the Rust conformance tests keep in
`$CPIS_FHIR_BODIES_DIR`) must parse as the resource its `resourceType`
names, and so must every resource inside a Bundle. With `--expect`, each
LABEL must start the name of at least one file (so a test that stopped
keeping a kind of answer fails here too). Exits 0 only if all is well.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


def validate(resource: dict, where: str) -> list[str]:
    """The problems of one resource (and of the resources a Bundle holds)."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str):
        return [f"{where}: no resourceType"]
    try:
        model = get_fhir_model_class(kind)
    except KeyError:
        return [f"{where}: unknown resourceType {kind!r}"]
    try:
        model.model_validate(resource)
    except ValidationError as e:
        return [f"{where}: not a valid R4 {kind}: {e}"]
    problems = []
    for i, entry in enumerate(resource.get("entry") or []):
        if "resource" in entry:
            problems += validate(entry["resource"], f"{where} entry[{i}]")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--expect", nargs="*", default=[], help="labels at least one file name must start with")
    args = ap.parse_args()
    files = sorted(args.dir.glob("*.json"))
    if not files:
        print(f"validate.py: no JSON files in {args.dir}", file=sys.stderr)
        return 1
    problems: list[str] = []
    kinds: set[str] = set()
    for path in files:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path.name}: not JSON: {e}")
            continue
        kinds.add(str(body.get("resourceType", "?")) if isinstance(body, dict) else "?")
        problems += validate(body, path.name) if isinstance(body, dict) else [f"{path.name}: not a JSON object"]
    for label in args.expect:
        if not any(f.name.startswith(f"{label}-") for f in files):
            problems.append(f"no answer kept for {label!r}")
    for p in problems:
        print(f"INVALID: {p}", file=sys.stderr)
    print(f"validate.py: {len(files)} bodies ({', '.join(sorted(kinds))}), {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
