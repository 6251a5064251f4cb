"""The helper every launching test uses ends what it started, on success and on its own timeout (below pytest's)."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from launch_helpers import LAUNCH_TIMEOUT_S, run_processes

# A launcher stand-in: starts a "rank" in a session of its own (as torch elastic does), records its pid, then hangs.
HANGING_LAUNCHER = """import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(sys.argv[1], "w").write(str(rank.pid))
time.sleep(300)
"""


def test_timed_out_launch_leaves_no_process_behind(tmp_path):
    pid_files = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_processes([[sys.executable, "-c", HANGING_LAUNCHER, str(f)] for f in pid_files], timeout=8)
    assert time.monotonic() - started < 30
    pids = [int(f.read_text()) for f in pid_files]
    time.sleep(0.5)
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], "the launchers' ranks outlived the test"
    assert LAUNCH_TIMEOUT_S < 600  # pytest's own timeout


def test_output_and_exit_codes_come_back():
    done = run_processes([[sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); "
                           f"sys.exit({code})"] for code in (0, 3)])
    assert [(d.returncode, d.stdout, d.stderr) for d in done] == [(0, "out\n", "err\n"), (3, "out\n", "err\n")]
