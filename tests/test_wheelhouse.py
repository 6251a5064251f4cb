"""scripts/wheelhouse.sh: a node that has torch and no index installs dialsum from the wheelhouse alone.

The node is a fresh venv of /usr/bin/python3 (no system site-packages) that has torch and torch's own dependencies
(setuptools among them) and nothing else: a .pth file points at a folder of links to this interpreter's copies of them (installing torch
again would take minutes). Its `pip freeze` is the wheelhouse's --installed list; building the wheelhouse needs the
package index (CI has it), installing from it has none."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_PYTHON = "/usr/bin/python3"
STEP_TIMEOUT_S = 420  # the wheelhouse build (two resolutions, wheels of the source-only dependencies); pytest's is 600


def run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """A command that must succeed (subprocess.run kills it when the timeout passes)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dist_closure(name: str) -> list:
    """`name`'s distribution and those it requires (no extras), as installed for this interpreter."""
    todo, seen, dists = [name], set(), []
    while todo:
        dist = distribution(todo.pop())
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in seen:
            continue
        seen.add(key)
        dists.append(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dists


def link_installed(dists: list, folder: Path) -> None:
    """Links in `folder` to every top-level file and package of `dists`, their .dist-info included."""
    folder.mkdir()
    for dist in dists:
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))


def node_env() -> dict[str, str]:
    """No index and no local wheel folder from this machine's pip configuration: the node's situation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in ([], ["--frobnicate"], [str(tmp_path / "w"), "--python"], [str(tmp_path / "w"), "--python", "3"]):
        proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "wheelhouse.sh"), *args], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert proc.stderr.startswith("wheelhouse: ")


@pytest.mark.slow
@pytest.mark.skipif(not Path(NODE_PYTHON).is_file(), reason=f"no {NODE_PYTHON} to make the node's venv from")
def test_a_node_with_torch_installs_dialsum_from_the_wheelhouse_without_an_index(tmp_path):
    node = tmp_path / "node"
    run([NODE_PYTHON, "-m", "venv", str(node)])
    py = str(node / "bin" / "python")
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], env=node_env())  # torch's own setuptools below
    link_installed(dist_closure("torch"), tmp_path / "torch-only")
    Path(site, "node-torch.pth").write_text(f"{tmp_path / 'torch-only'}\n")
    freeze = run([py, "-m", "pip", "freeze", "--all"], env=node_env()).stdout
    assert re.search(r"^torch==", freeze, re.M) and "transformers" not in freeze
    (tmp_path / "installed.txt").write_text(freeze)
    node_python = run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()

    wheels = tmp_path / "wheelhouse"
    built = run(["bash", str(REPO_ROOT / "scripts" / "wheelhouse.sh"), str(wheels), "--python", node_python,
                 "--installed", str(tmp_path / "installed.txt")], timeout=STEP_TIMEOUT_S,
                env={**os.environ, "PYTHON": sys.executable})
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert re.search(r"\d+ wheels, [\d.]+ MiB", built.stdout), built.stdout
    assert any(n.startswith("dialsum-") for n in names) and any(n.startswith("deepspeed-") for n in names)
    assert not any(n.startswith(("torch-", "sympy-", "networkx-")) for n in names), names  # the node has them

    run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "dialsum"], timeout=300,
        env=node_env())
    bin_ = node / "bin"
    run([str(bin_ / "dialsum"), "--help"], cwd=tmp_path, env=node_env())
    run([py, "-m", "engine", "--help"], cwd=tmp_path, env={**node_env(), "DS_ACCELERATOR": "cpu"})
    rendered = run([py, "-c", "import json, launcher.ds_config as d; "
                    "print(d._templates()); print(json.dumps(d.render_deepspeed_config(zero_stage=3, "
                    "precision='bf16', micro_batch_size=2, gradient_accumulation_steps=4, world_size=2, "
                    "gradient_clipping=1.0, hidden_size=64, device='cuda')))"], cwd=tmp_path, env=node_env())
    where, config = rendered.stdout.strip().splitlines()
    assert where.startswith(site) and str(REPO_ROOT) not in where   # the wheel's templates, not the checkout's
    assert '"stage": 3' in config and '"train_batch_size": 16' in config
