"""A real one-machine SLURM cluster for tests: munge + slurmctld + two slurmd standing in for nodes n1 and n2
(Debian slurm-wlm), config in a temp dir.

Installed with apt-get when missing and started by hand (systemd is not running in CI containers); needs root, and the
fixture skips with that reason otherwise. Stopped after the tests (`scontrol shutdown`, then munged if we started it).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
MUNGE_PID = Path("/run/munge/munged.pid")

SLURM_CONF = """\
ClusterName=dialsumtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=n1 NodeHostname={hostname} NodeAddr=127.0.0.1 Port=17001 CPUs=1 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname={hostname} NodeAddr=127.0.0.1 Port=17002 CPUs=1 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
NODES = ("n1", "n2")  # two slurmd on this machine stand in for two nodes


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60, **kwargs)

    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                             capture_output=True, text=True, check=True, timeout=60).stdout
        return out.strip().split(";")[0]

    def wait(self, job_id: str, timeout: float = 300) -> str:
        """Poll squeue (faster than `sbatch --wait`) until the job is gone; its final state from scontrol."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-j", job_id, check=False).stdout.strip():
                break
            time.sleep(0.2)
        else:
            self.run("scancel", job_id, check=False)
            raise TimeoutError(f"SLURM job {job_id} still queued or running after {timeout} s")
        info = self.run("scontrol", "show", "job", job_id, check=False).stdout
        return next((w.split("=", 1)[1] for w in info.split() if w.startswith("JobState=")), "UNKNOWN")


def _ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env,
                   capture_output=True, check=True, timeout=900)


def _start_munge() -> bool:
    """Start munged unless one already answers; True when this fixture started it (and must stop it)."""
    if MUNGE_PID.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return False
    MUNGE_PID.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_PID.parent, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True, timeout=30)
    return True


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a test SLURM cluster needs root (to install slurm/munge and run slurmd as SlurmdUser=root)")
    _ensure_installed()
    started_munge = _start_munge()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "run", "log"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, ctld_port=16817, d_port=16818, hostname=socket.gethostname()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, capture_output=True, timeout=30)
    for node in NODES:
        subprocess.run(["slurmd", "-f", str(conf), "-N", node], env=env, check=True, capture_output=True, timeout=30)
    cluster = SlurmCluster(root=root, env=env)
    deadline = time.monotonic() + 30
    while cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split() != ["idle"] * len(NODES):
        if time.monotonic() > deadline:
            raise RuntimeError("SLURM node never became idle:\n" + (root / "log" / "slurmctld.log").read_text()[-3000:])
        time.sleep(0.2)
    try:
        yield cluster
    finally:
        cluster.run("scontrol", "shutdown", check=False)
        if started_munge and MUNGE_PID.exists():
            os.kill(int(MUNGE_PID.read_text().strip()), signal.SIGTERM)
