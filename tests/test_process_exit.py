"""engine.process_exit.exit_now: the entry points' fast exit still runs atexit handlers, flushes what was printed and
keeps the exit code; only the module teardown is skipped."""
from __future__ import annotations

import subprocess
import sys

from launch_helpers import REPO_ROOT


def test_exit_now_runs_atexit_flushes_and_keeps_the_code(tmp_path):
    marker = tmp_path / "atexit-ran"
    code = (
        "import atexit, sys\n"
        "from engine.process_exit import exit_now\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "sys.stdout.write('no newline, block-buffered')\n"
        "sys.stderr.write('on stderr')\n"
        "exit_now(3)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 3
    assert proc.stdout == "no newline, block-buffered"
    assert proc.stderr == "on stderr"
    assert marker.read_text() == "ran"


def test_console_script_exit_code_through_exit_now(tmp_path):
    """`python -m launcher.cli` (what the console script runs) on a missing config: one line, exit 2."""
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", str(missing)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(missing) in proc.stderr
