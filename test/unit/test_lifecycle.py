"""The stop request of the package's executables: a signal is recorded, never raised (a raising
handler broke rclpy's message take; see qd_perception.ros.lifecycle)."""

from __future__ import annotations

import os
import signal

import pytest

from qd_perception.ros.lifecycle import STOP_SIGNALS, StopRequest


@pytest.fixture
def restore_handlers():
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, h in old.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_signal_is_recorded_not_raised(restore_handlers, sig):
    stop = StopRequest.install()
    calls: list[str] = []
    stop.on_request(lambda: calls.append("player.stop"))
    assert not stop.is_set() and not calls
    os.kill(os.getpid(), sig)  # the handler runs at the next bytecode of this (main) thread
    os.kill(os.getpid(), signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT)  # escalation
    assert stop.is_set() and stop.signal_name == signal.Signals(sig).name
    assert calls == ["player.stop", "player.stop"]


def test_callback_added_after_the_request_runs_at_once(restore_handlers):
    stop = StopRequest.install()
    os.kill(os.getpid(), signal.SIGTERM)
    calls: list[int] = []
    stop.on_request(lambda: calls.append(1))
    assert calls == [1]
