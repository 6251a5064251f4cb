"""scripts/setup_env.sh on a fresh machine: `wheel` is installed before anything that pip has to build."""
from __future__ import annotations


def test_setup_env_installs_wheel_before_anything_else(repo_root):
    """A new venv has pip (23.0 with Python 3.11) and setuptools but no `wheel`, and pip then installs the sdists with
    no pyproject.toml among the dependencies (DeepSpeed, rouge-score) through the deprecated `setup.py install`,
    printing a DEPRECATION notice for each on the demo's console. With wheel present it builds them as wheels, silently.
    Measured in fresh venvs without a pip cache (4 minutes each, network-bound): two notices before, none after; this
    pins the order that relies on."""
    lines = (repo_root / "scripts" / "setup_env.sh").read_text().splitlines()
    installs = [line.split()[1:] for line in lines if line.strip().startswith("quiet_pip ")]
    assert installs[0] == ["wheel"], installs
