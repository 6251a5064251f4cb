"""A local sweep agent: ask the shared study for a trial, train it as a real `dialsum launch`, tell the outcome.

Several agents (`--agents N`, or agents on other machines joining by the storage URL) share one Optuna study. Each
trial is a subprocess `python -m launcher.cli launch BASE.yaml --sweep-params P.json --set experiment.group=<sweep>`
with the run id chosen here (`--run-id`) and the trial named for pruning (`--sweep-trial`), so the trial's tracked run (and its W&B run, grouped by the sweep) is read back
from the tracker afterwards: completed -> value `best/<metric>`, pruned marker -> PRUNED, anything else -> FAIL.

Dead agents: while a trial runs its agent writes a `heartbeat` user attr; a RUNNING trial silent for 3 heartbeats is
failed by whichever agent notices first and re-queued with the same parameters (`retry_of`). Optuna's own heartbeat
works only on RDB storage, this works on the journal file too. Budget: `count` trials in total; a retry takes its
original's place, and a trial asked beyond the budget by a racing agent is failed at once and marked `surplus`.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from engine.atomic import atomic_write_text
from engine.compat import optuna_trial_id
from engine.sweep_trial import PRUNED_ATTR, TrialLink, open_storage
from engine.config import load_config
from engine.errors import UserError
from engine.plan import fresh_run_id
from launcher.sweep.optuna_backend import create_study, suggest
from launcher.sweep.spec import SweepSpec, check_params, load_sweep

RUN_ID, PARAMS, RETRY_OF, SURPLUS, HEARTBEAT, ERROR = "run_id", "params", "retry_of", "surplus", "heartbeat", "error"
STALE_AFTER_BEATS = 3


@dataclass
class AgentSettings:
    sweep_file: str
    configs: list[str]
    storage: str
    count: int
    overrides: list[str] = field(default_factory=list)
    nproc: int | None = None
    heartbeat_seconds: float = 30.0
    seed: int | None = None
    agent_index: int = 0

    def save(self, path: Path) -> Path:
        return atomic_write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> AgentSettings:
        return cls(**json.loads(Path(path).read_text()))


def sweep_dir(output_root: str, name: str) -> Path:
    return Path(output_root).resolve() / "sweeps" / name


def trial_command(s: AgentSettings, group: str, name: str, model_name: str, params_file: Path) -> list[str]:
    """`dialsum launch` for one trial: the sweep's group, the trial's name, one registry model for the whole sweep.
    The user's --set come first so these three always hold."""
    cmd = [sys.executable, "-m", "launcher.cli", "launch", *s.configs, "--sweep-params", str(params_file)]
    for item in (*s.overrides, f"experiment.group={group}", f"experiment.name={name}", f"model.registry_name={model_name}"):
        cmd += ["--set", item]
    return cmd + (["--nproc", str(s.nproc)] if s.nproc else [])


def _log(agent: int, msg: str) -> None:
    print(f"[sweep agent {agent}] {msg}", flush=True)


class _Heartbeat:
    """Marks the trial alive every `seconds` until stopped."""

    def __init__(self, trial: optuna.Trial, seconds: float):
        self.trial, self.seconds = trial, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except Exception:  # finished (e.g. failed as stale by another agent) or the store is down: stop beating
                return

    def __enter__(self) -> _Heartbeat:
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def retry_stale_trials(study: optuna.Study, heartbeat_seconds: float) -> list[int]:
    """Fail RUNNING trials whose agent stopped beating and re-queue their parameters; returns the failed numbers."""
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get(HEARTBEAT, t.datetime_start.timestamp() if t.datetime_start else now)
        if now - beat <= STALE_AFTER_BEATS * heartbeat_seconds:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another agent got there first (or the trial just finished)
            continue
        study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
        failed.append(t.number)
    return failed


def _slot(study: optuna.Study, number: int) -> int:
    """How many budget places trials numbered below this one hold (retries reuse their original's place)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and RETRY_OF not in t.user_attrs)


def _target_reached(spec: SweepSpec, study: optuna.Study) -> bool:
    if spec.target is None:
        return False
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return any(v >= spec.target if spec.goal == "maximize" else v <= spec.target for v in values)


class Agent:
    def __init__(self, settings: AgentSettings):
        self.s = settings
        self.spec = load_sweep(settings.sweep_file, settings.configs, settings.overrides, world=settings.nproc)
        self.base = load_config(settings.configs, settings.overrides).config
        self.dir = sweep_dir(self.base.experiment.output_root, self.spec.name)
        storage = open_storage(settings.storage)
        seed = self.base.experiment.seed if settings.seed is None else settings.seed
        try:
            started = len(optuna.load_study(study_name=self.spec.name, storage=storage).get_trials(deepcopy=False))
        except KeyError:  # no such study yet
            started = 0
        # Distinct sampler streams for agents started together (index) and for agents that join later (trials seen).
        self.study = create_study(self.spec, storage, seed + 7919 * started + settings.agent_index)

    def run(self) -> None:
        """Run trials until the budget is used (waiting for other agents' trials, retrying dead ones)."""
        while True:
            for number in retry_stale_trials(self.study, self.s.heartbeat_seconds):
                _log(self.s.agent_index, f"trial {number} lost its agent; queued again")
            trials = self.study.get_trials(deepcopy=False)
            used = sum(1 for t in trials if RETRY_OF not in t.user_attrs and SURPLUS not in t.user_attrs)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if _target_reached(self.spec, self.study):
                break
            if used >= self.s.count and not waiting:
                if any(t.state == TrialState.RUNNING for t in trials):
                    time.sleep(min(self.s.heartbeat_seconds, 5.0))
                    continue
                break
            trial = self.study.ask()
            if RETRY_OF not in trial.user_attrs and _slot(self.study, trial.number) >= self.s.count:
                trial.set_user_attr(SURPLUS, True)
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            self.run_trial(trial)

    def run_trial(self, trial: optuna.Trial) -> None:
        spec, s = self.spec, self.s
        params = suggest(trial, spec)
        run_id = fresh_run_id()
        trial.set_user_attr(PARAMS, params)
        trial.set_user_attr(RUN_ID, run_id)
        try:
            loaded = check_params(spec, params, s.configs, s.overrides)
        except UserError as exc:
            self._fail(trial, str(exc))
            return
        trials_dir = self.dir / "trials"
        params_file = atomic_write_text(trials_dir / f"{trial.number}.json",
                                        json.dumps(spec.config_params(params), indent=2))
        log_file = trials_dir / f"{trial.number}.log"
        cmd = trial_command(s, spec.name, f"{spec.name}-trial-{trial.number}", self.base.registry_name(), params_file)
        link = TrialLink(storage=s.storage, study=spec.name, trial_id=optuna_trial_id(trial), number=trial.number,
                         metric=spec.metric, direction=spec.goal,
                         hyperband=spec.hyperband.kwargs() if spec.hyperband else None)
        cmd += ["--run-id", run_id, "--sweep-trial", link.to_json()]
        _log(s.agent_index, f"trial {trial.number} (run {run_id}) started: {json.dumps(params)}  log: {log_file}")
        with _Heartbeat(trial, s.heartbeat_seconds), open(log_file, "w") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        self._tell(trial, run_id, loaded.config, code, log_file)

    def _tell(self, trial: optuna.Trial, run_id: str, cfg, code: int, log_file: Path) -> None:
        from engine.store import store_uri
        from engine.store import Tracker, open_store

        store = open_store(store_uri(cfg))
        try:
            tracker = Tracker(store)
            run = tracker.get_run(run_id) if tracker.exists(run_id) else None
            (frozen,) = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number]
            value = (run or {}).get("summary", {}).get(f"best/{self.spec.metric}")
            try:
                if code == 0 and PRUNED_ATTR in frozen.user_attrs:
                    step = frozen.user_attrs[PRUNED_ATTR]
                    if run is not None:
                        tracker.log_event(run_id, step, "pruned", {"sweep": self.spec.name, "trial": trial.number,
                                                                   "evaluation": step})
                    self.study.tell(trial, state=TrialState.PRUNED)
                    _log(self.s.agent_index, f"trial {trial.number} pruned at evaluation {step} (run {run_id})")
                elif code == 0 and run is not None and run["status"] == "completed" and _finite(value):
                    self.study.tell(trial, float(value))
                    _log(self.s.agent_index, f"trial {trial.number} completed: {self.spec.metric}={value:.4f} "
                                             f"(run {run_id})")
                else:
                    status = run["status"] if run else "not recorded"
                    why = f"exit code {code}, run {status}" if code or status != "completed" \
                        else f"no best/{self.spec.metric} in the run summary (is evaluation on?)"
                    self._fail(trial, f"{why}; see {log_file}")
            except (ValueError, RuntimeError) as exc:  # failed as stale meanwhile: its retry replaces it
                _log(self.s.agent_index, f"trial {trial.number} was already finished elsewhere: {exc}")
        finally:
            store.close()

    def _fail(self, trial: optuna.Trial, why: str) -> None:
        trial.set_user_attr(ERROR, why)
        self.study.tell(trial, state=TrialState.FAIL)
        _log(self.s.agent_index, f"trial {trial.number} failed: {why}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def main(argv: list[str] | None = None) -> int:
    """`python -m launcher.sweep.agent SETTINGS.json`: one agent process of `dialsum sweep --agents N`."""
    args = sys.argv[1:] if argv is None else argv
    try:
        Agent(AgentSettings.load(args[0])).run()
    except UserError as exc:
        print(f"dialsum: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.exit(main())
