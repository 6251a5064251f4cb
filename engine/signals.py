"""Preemption: SIGTERM / SIGUSR1 (SLURM time limit, `scancel --signal`, torch elastic shutdown) only set a flag; the
checkpoint is written at a step boundary after every rank agreed, never inside the signal handler.

The agreement is an asynchronous all-reduce started at each step end and read at the next one, so it never makes ranks
wait for each other: a signal received during step N stops training, checkpointed, at the end of step N + 1.

Between the signal and that step end a rank may legitimately be busy for minutes (a step of a large model, a
CPU-offloaded optimizer step, a data loader on a slow filesystem, a long callback, an evaluation, a checkpoint write).
So a signalled rank is forced out only when it cannot make progress: when a peer it must meet in a collective is gone
or frozen. Every rank of a group beats in the rendezvous store (`Heartbeat`); a signalled rank's watchdog exits only
when some peer has not beaten for PEER_GRACE_S (`PeerWatch`). A peer that is alive but wedged inside a collective
keeps beating: the launcher's SIGKILL after its shutdown grace (launcher/spawn.py) bounds that case."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch
from transformers import TrainerCallback

from engine.distributed import is_distributed
from engine.world import World

log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# A signalled rank whose peer has not beaten for this long exits without a checkpoint: the peer is dead or frozen
# (typically torch elastic is taking the group down), and the collective it is waiting in would never return.
PEER_GRACE_S = float(os.environ.get("DIALSUM_PEER_GRACE_S", "30"))
BEAT_S = 1.0  # a rank beats, and a watchdog reads its peers' beats, this often
STORE_TIMEOUT_S = 10.0  # one store call at most (an unreachable node 0 must not hold the watchdog)


class Heartbeat:
    """This rank's beat in the store its process group was set up with (env://: the TCPStore at MASTER_ADDR:MASTER_PORT
    on node 0, reached through a client of its own, the public route; `_get_default_store()` is private), and what
    its peers' beats read. A daemon thread adds 1 to this rank's counter every BEAT_S while the group is up; a Python
    thread runs while its main thread computes, sleeps in a callback or waits in C++ (torch ops, DeepSpeed's CPU Adam
    and gloo release the GIL), so only a process that is gone or frozen stops beating. Counters, not times: no clock
    is compared across nodes. Keys carry torch elastic's attempt, since a restarted group may share the store (static
    rendezvous); errors are one warning and never reach training."""

    def __init__(self, world: World):
        self.rank, self.address = world.rank, (world.master_addr or "127.0.0.1", world.master_port)
        self.peers = [r for r in range(world.world_size) if r != world.rank]
        self.attempt = world.restart
        # torch elastic's shared store lives in its agent, not in rank 0: losing it says nothing about the peers
        self.store_in_rank0 = not world.agent_store
        self.connected = threading.Event()
        self._store = None
        self._peer_keys_made = False
        self._warned = False
        threading.Thread(target=self._run, name="dialsum-heartbeat", daemon=True).start()

    def key(self, rank: int) -> str:
        return f"dialsum/heartbeat/{self.attempt}/{rank}"

    def _run(self) -> None:
        host, port = self.address
        where = f"{host}:{port}"
        try:
            self._store = torch.distributed.TCPStore(host, port, is_master=False,
                                                     timeout=timedelta(seconds=STORE_TIMEOUT_S))
        except Exception as exc:
            log.warning("preemption: no heartbeat (store at %s: %s); a signalled rank whose peer is gone waits for "
                        "the launcher's kill", where, exc)
            return
        self.connected.set()
        while torch.distributed.is_initialized():  # after the group is destroyed, no peer waits on this rank
            try:
                self._store.add(self.key(self.rank), 1)
            except Exception as exc:
                if torch.distributed.is_initialized() and not self._warned:
                    self._warned = True
                    log.warning("preemption: heartbeat to the store at %s failed: %s", where, exc)
            time.sleep(BEAT_S)

    def peer_counts(self) -> dict[int, int]:
        """Each peer's beats so far (raises when the store cannot be read). A key no peer wrote yet is made first:
        `add(key, 0)` never blocks, where `multi_get` would wait for a missing key."""
        keys = [self.key(r) for r in self.peers]
        if not self._peer_keys_made:
            for key in keys:
                self._store.add(key, 0)
            self._peer_keys_made = True
        return {rank: int(value) for rank, value in zip(self.peers, self._store.multi_get(keys))}


class PeerWatch:
    """How long each peer has not beaten, on this rank's clock: a peer is heard when its count changed since the last
    look. `pause` takes time out of the count: a watchdog that woke late (its own process was starved: a frozen
    machine, a call that held the GIL) saw nothing, which is no evidence against a peer."""

    def __init__(self, peers: list[int], now: float):
        self.heard = dict.fromkeys(peers, now)
        self.counts: dict[int, int] = {}

    def pause(self, seconds: float) -> None:
        for rank in self.heard:
            self.heard[rank] += max(0.0, seconds)

    def silent(self, counts: dict[int, int], now: float, grace: float) -> dict[int, float]:
        """{peer: seconds since its last beat} for the peers silent longer than `grace`; `counts` holds the peers
        read this time (none when the store could not be read)."""
        for rank, count in counts.items():
            if self.counts.get(rank) != count:
                self.counts[rank], self.heard[rank] = count, now
        return {rank: now - heard for rank, heard in self.heard.items() if now - heard > grace}


def silent_peers(beat: Heartbeat, left: threading.Event, grace: float) -> tuple[dict[int, float], str] | None:
    """Read the peers' beats every BEAT_S until one has been silent for `grace` s: ({peer: seconds silent}, why).
    None once `left` is set, or at once when this rank has no heartbeat (warned; the launcher's kill after its grace
    is then the bound). A store that cannot be read counts as every peer silent when rank 0 hosts it (rank 0 is gone),
    and as no news either way when torch elastic's agent does."""
    if not beat.connected.wait(STORE_TIMEOUT_S + BEAT_S):
        return None
    watch = PeerWatch(beat.peers, time.monotonic())
    looked = time.monotonic()
    while not left.wait(BEAT_S):
        woke, reason = time.monotonic(), ""
        try:
            counts = beat.peer_counts()
        except Exception as exc:
            if not beat.store_in_rank0:
                watch.pause(time.monotonic() - looked)
                looked = time.monotonic()
                continue
            counts, reason = {}, f" (the store on rank 0 cannot be read: {exc})"
        watch.pause(woke - looked - BEAT_S)  # a late wake-up: this process was starved, no evidence against a peer
        looked = time.monotonic()
        silent = watch.silent(counts, looked, grace)
        if silent:
            return silent, reason
    return None


class PreemptionCallback(TrainerCallback):
    """Installs the handlers at construction; at every step end all ranks start reducing the flag (every rank calls
    it, so none is left waiting) and read the reduction started one step before; when any rank was signalled they all
    save a checkpoint and stop together. `start_flag_reduce(flag)` returns a function that waits for the answer.

    In a group of several ranks it also starts the rank's heartbeat, and the signal wakes a watchdog thread through
    `signal.set_wakeup_fd` (Python runs a handler only when its main thread runs Python code, never while it is stuck
    in a collective: the case the watchdog is for)."""

    def __init__(self, start_flag_reduce: Callable[[bool], Callable[[], bool]], lead_s: float = 0.0,
                 world: World | None = None):
        self.start_flag_reduce = start_flag_reduce
        self._previous: Callable[[], bool] | None = None
        self.signal_name: str | None = None
        self.preempted_at: int | None = None
        self._watchdog: threading.Thread | None = None
        self._left = threading.Event()  # set when this rank waits on no peer any more: the watchdog stops
        self.lead_s = lead_s  # how long the launcher waits for signalled ranks (plan.preempt_lead_s); 0: unknown
        self._step_started = self._mark = time.monotonic()
        self.step_s = 0.0  # longest step seen (after the first, which includes warm-up)
        self._lead_warned = False
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)
        self.heartbeat = None
        self._listening = False  # True: the wake-up listener arms the watchdog, the handler does not
        if world is not None and world.world_size > 1 and is_distributed():
            self.heartbeat = Heartbeat(world)
            self._wake_on_signals()

    def _wake_on_signals(self) -> None:
        """The C-level handler writes each signal's number to this pipe at once, whatever the main thread is doing."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous != -1:  # someone else's (an event loop in the main thread): keep theirs
            signal.set_wakeup_fd(previous)
            os.close(read_fd), os.close(write_fd)
            log.warning("preemption: the signal wake-up fd is taken; the watchdog starts only when the main thread "
                        "runs Python code")
            return

        def listen():
            while True:
                for signum in os.read(read_fd, 64):
                    if signum in PREEMPT_SIGNALS:
                        self._arm(signum)

        threading.Thread(target=listen, name="dialsum-signal-wakeup", daemon=True).start()
        self._listening = True

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        if not self._listening:
            self._arm(signum)

    def _arm(self, signum: int) -> None:
        if self.heartbeat is not None and self._watchdog is None and not self._left.is_set():
            self._watchdog = threading.Thread(target=self._watch, args=(signum,), name="dialsum-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self, signum: int) -> None:
        """Exit (128 + signal, no checkpoint) once a peer has been silent for PEER_GRACE_S."""
        found = silent_peers(self.heartbeat, self._left, PEER_GRACE_S)
        if found:
            silent, reason = found
            log.error("preemption: no heartbeat from rank %s for %.0f s%s: a peer is gone or frozen, exiting without a "
                      "checkpoint", ", ".join(map(str, sorted(silent))), max(silent.values()), reason)
            os._exit(128 + signum)

    def leave(self) -> None:
        """This rank waits on no peer any more (training ended, or it failed): a late signal or a peer that exits
        first must not force it out during its closing writes."""
        self._left.set()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.monotonic()

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark = time.monotonic()

    def on_save(self, args, state, control, **kwargs):
        """Warn once when a preemption could not be honoured: up to two steps and a checkpoint happen between the
        signal and the end of the run, and the launcher / SLURM only waits `lead_s` (plan.preempt_lead_s)."""
        save_s = time.monotonic() - self._mark
        needed = 2 * self.step_s + save_s
        if self.lead_s and needed > self.lead_s and not self._lead_warned and state.is_world_process_zero:
            self._lead_warned = True
            log.warning("preemption lead too short: 2 x step %.0f s + checkpoint %.0f s = %.0f s > %.0f s "
                        "(the launcher's grace, DIALSUM_SHUTDOWN_GRACE_S; SLURM's --signal lead): a preemption would end "
                        "without a checkpoint", self.step_s, save_s, needed, self.lead_s)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if state.global_step > 1:
            self.step_s = max(self.step_s, now - self._step_started)
        self._mark = now
        agreed = self._previous is not None and self._previous()
        self._previous = self.start_flag_reduce(self.signal_name is not None)
        if agreed:
            log.warning("preemption requested (%s): checkpointing at step %d and stopping",
                        self.signal_name or "another rank", state.global_step)
            self.preempted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:  # every rank waits for the reduction it started last
            self._previous()
            self._previous = None
        self.leave()
