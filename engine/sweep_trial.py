"""A local sweep trial as a run sees it: where its study lives and what it reports (`TrialLink`), and the Optuna
storage and pruner both the sweep agents (launcher/sweep/) and the run's pruning callback open. Light to import: the
agents and the CLI need it without torch or transformers; Optuna is imported where it is used."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PRUNED_ATTR = "pruned_at"


@dataclass
class TrialLink:
    storage: str          # what `open_storage` below accepts: an RDB URL or a journal file path
    study: str
    trial_id: int         # Optuna's storage id (engine.compat.optuna_trial_id), what `optuna.trial.Trial(study, id)` takes
    number: int
    metric: str           # bare metric name; the Trainer reports it as `eval_<metric>`
    direction: str        # "maximize" | "minimize"
    hyperband: dict | None = None  # HyperbandPruner kwargs, or None for no pruning

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialLink:
        return cls(**json.loads(text))


def is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str):
    """An RDB URL -> optuna RDBStorage; anything else is a journal file path (the sweep agents open it the same way)."""
    import optuna

    if is_url(storage):
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def make_pruner(hyperband: dict | None):
    import optuna

    return optuna.pruners.HyperbandPruner(**hyperband) if hyperband else optuna.pruners.NopPruner()
