"""What a wheelhouse holds: from a pip installation report (`pip install --dry-run --report`), the packages dialsum
needs on the target, not descending into the ones the target already has (their own dependencies are its business).

python scripts/wheelhouse_closure.py REPORT.json HAVE.txt [--python X.Y] [--platform TAG]
prints one line per package: `name==version<TAB>download url`. HAVE.txt: one package name a line (pip freeze lines
work: the name is what comes before `==`). Markers are evaluated for the target (--python, --platform), not for the
interpreter that runs this.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:  # pip's own copy: the builder may have pip and nothing else
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python: str | None, platform: str | None) -> dict:
    """Marker variables of the target: this interpreter's, with the target's Python and platform put in."""
    env = default_environment()
    if python:
        env.update(python_version=python, python_full_version=f"{python}.0")
    if platform:
        machine = re.sub(r"^(many|musl)?linux(\d+|_\d+_\d+)?_", "", platform)
        env.update(platform_machine=machine, sys_platform="linux", platform_system="Linux", os_name="posix")
    return env


def have_names(path: str) -> set[str]:
    names = set()
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[=<>!~ @\[;]", line, maxsplit=1)[0]))
    return names


def closure(report: dict, have: set[str], env: dict) -> list[dict]:
    """The report's packages reachable from the requested ones through requirements whose markers hold on the
    target, stopping at packages in `have`."""
    items = {canonical(i["metadata"]["name"]): i for i in report["install"]}
    todo = [n for n, i in items.items() if i.get("requested") and n not in have]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        item = items[name]
        for extra in [""] + list(item.get("requested_extras") or []):
            for spec in item["metadata"].get("requires_dist") or []:
                req = Requirement(spec)
                dep = canonical(req.name)
                if dep in have or dep not in items or dep in seen:
                    continue
                if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                    todo.append(dep)
    return [items[n] for n in sorted(seen)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report")
    p.add_argument("have")
    p.add_argument("--python")
    p.add_argument("--platform")
    a = p.parse_args(argv)
    report = json.load(open(a.report, encoding="utf-8"))
    for item in closure(report, have_names(a.have), target_environment(a.python, a.platform)):
        meta = item["metadata"]
        print(f"{meta['name']}=={meta['version']}\t{item['download_info']['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
