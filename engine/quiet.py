"""Known library noise, filtered where it starts, in every process that imports the libraries (a rank, and the
launcher, which reads model configs and audits rows with the same code), so the console shows the run."""
from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Deprecation FutureWarnings from transformers/DeepSpeed/torch for calls the engine and DeepSpeed make,
    transformers' "Loading weights" bars, its embedding-resize note (speaker tags are added on purpose) and its print
    when W&B is offline (engine.compat.quiet_transformers), rouge-score's absl INFO line, and bitsandbytes' note that
    its optional CPU kernel package is not installed (its built-in CPU kernels run instead)."""
    import warnings

    from transformers.utils import logging as hf_logging

    from engine.compat import quiet_transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|deepspeed|torch)(\.|$)")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    quiet_transformers()
