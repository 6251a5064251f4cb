"""The preemption watchdog's view of its peers (engine/signals.py): a peer is silent when its heartbeat count has not
changed for longer than the grace, on this rank's clock; time the watchdog itself did not run is not held against it."""
from __future__ import annotations

from engine.signals import PeerWatch


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
