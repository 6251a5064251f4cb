"""The preemption watchdog's view of its peers (engine/signals.py): a peer is silent when its heartbeat count has not
changed for longer than the grace, on this rank's clock; time the watchdog itself did not run is not held against it,
nor is a lost store that lives outside the ranks."""
from __future__ import annotations

import threading
import time

import pytest

from engine import signals
from engine.signals import PeerWatch, silent_peers


def test_a_peer_whose_count_stops_changing_is_silent_after_the_grace():
    watch = PeerWatch([1, 2], now=0.0)
    assert watch.silent({1: 5, 2: 7}, now=1.0, grace=30) == {}
    assert watch.silent({1: 20, 2: 7}, now=16.0, grace=30) == {}
    assert watch.silent({1: 35, 2: 7}, now=31.5, grace=30) == {2: 30.5}, "rank 2 has not beaten since 1.0"


def test_an_unreadable_store_hears_no_peer():
    watch = PeerWatch([1, 3], now=0.0)
    assert watch.silent({}, now=29.0, grace=30) == {}
    assert watch.silent({}, now=31.0, grace=30) == {1: 31.0, 3: 31.0}


def test_time_the_watchdog_did_not_run_is_not_held_against_a_peer():
    """Its own process starved for 40 s (every rank's main thread in one long call, a frozen machine): the peer's
    thread wakes as late as the watchdog, so an unchanged count right after says nothing."""
    watch = PeerWatch([1], now=0.0)
    assert watch.silent({1: 3}, now=1.0, grace=30) == {}
    watch.pause(40.0)
    assert watch.silent({1: 3}, now=42.0, grace=30) == {}
    assert watch.silent({1: 3}, now=72.0, grace=30) == {1: 31.0}


class FakeBeat:
    """A Heartbeat's face to the watchdog: rank 1 beats only while `beating`; reading the store fails when `broken`."""

    def __init__(self, store_in_rank0: bool = True):
        self.peers, self.store_in_rank0 = [1], store_in_rank0
        self.connected = threading.Event()
        self.connected.set()
        self.count, self.beating, self.broken = 0, True, False

    def peer_counts(self) -> dict[int, int]:
        if self.broken:
            raise ConnectionResetError("store gone")
        self.count += self.beating
        return {1: self.count}


def watch_in_background(beat, grace: float):
    left, found = threading.Event(), []
    thread = threading.Thread(target=lambda: found.append(silent_peers(beat, left, grace)), daemon=True)
    thread.start()
    return left, found, thread


@pytest.fixture
def fast_beats(monkeypatch):
    monkeypatch.setattr(signals, "BEAT_S", 0.05)


def test_the_watchdog_names_a_peer_that_stopped_beating(fast_beats):
    beat = FakeBeat()
    left, found, thread = watch_in_background(beat, grace=1.0)
    time.sleep(1.5)
    assert thread.is_alive(), "a beating peer is never silent"
    beat.beating = False
    thread.join(5)
    [(silent, reason)] = found
    assert list(silent) == [1] and 1.0 < silent[1] < 2.0 and reason == ""


def test_a_store_on_rank_0_that_cannot_be_read_means_rank_0_is_gone(fast_beats):
    beat = FakeBeat(store_in_rank0=True)
    beat.broken = True
    left, found, thread = watch_in_background(beat, grace=1.0)
    thread.join(5)
    [(silent, reason)] = found
    assert list(silent) == [1] and "store on rank 0 cannot be read: store gone" in reason


def test_a_lost_agent_store_is_no_news_of_the_peers(fast_beats):
    """torch elastic's shared store lives in its agent: the agent gone says nothing about the ranks, so the watchdog
    forces no one out (the launcher's kill bounds the wait), and counts again from when the store is back."""
    beat = FakeBeat(store_in_rank0=False)
    beat.broken = True
    left, found, thread = watch_in_background(beat, grace=1.0)
    time.sleep(2.5)
    assert thread.is_alive() and found == []
    beat.broken, beat.beating = False, False
    time.sleep(0.5)
    assert thread.is_alive(), "silent for 0.5 s only since the store came back"
    thread.join(5)
    [(silent, _)] = found
    assert list(silent) == [1]


def test_a_rank_that_left_stops_watching(fast_beats):
    beat = FakeBeat()
    beat.beating = False
    left, found, thread = watch_in_background(beat, grace=1.0)
    left.set()
    thread.join(5)
    assert found == [None]
