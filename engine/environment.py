"""What a run records about where it ran: git commit, package versions, host, plan topology."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata

PACKAGES = ("dialsum", "torch", "deepspeed", "transformers", "accelerate", "tokenizers", "wandb")


def git_commit(cwd: str = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def collect_environment(topology: dict) -> dict:
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
        "topology": topology,
    }
