"""Leave a finished process without Python's module teardown.

After `import torch` (and transformers), the interpreter's own shutdown (clearing every module, a last garbage
collection over torch's, sympy's and transformers' objects) costs 0.6-1.1 s of CPU here: every rank, the launcher and
each sweep trial pay it once a run, after all their work is done. The entry points call `exit_now` instead of
returning: the atexit handlers still run (logging's flush, W&B's teardown of its service process), standard streams
are flushed, then the process ends with its exit code. Only the entry points call it, never library code, so a
caller of `main()` (tests, the Python API) keeps a normal interpreter.
"""
from __future__ import annotations

from typing import NoReturn

from engine.compat import exit_without_teardown


def exit_now(code: int) -> NoReturn:
    exit_without_teardown(code)
