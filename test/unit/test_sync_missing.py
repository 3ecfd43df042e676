"""Missing streams: the stamp-based presence tracker and sets formed without a suspended stream."""

from __future__ import annotations

import pytest

from qd_perception.sync import ApproximateTimePolicy, SyncConfig
from qd_perception.sync.presence import StreamPresence

MS = 1_000_000  # ns
CAMS = ("front", "left", "back")


def test_presence_silent_stale_and_back():
    p = StreamPresence(CAMS, timeout_s=0.3, jump_s=2.0)
    for k in range(3):  # all stream at 10 Hz
        assert not any(p.observe(c, k * 100 * MS) for c in CAMS)
    # "back" falls silent: missing once the others are more than 0.3 s past its last stamp
    changed = [p.observe(c, k * 100 * MS) for k in range(3, 7) for c in ("front", "left")]
    # at front's 600 ms stamp (0.4 s past back's last; at 500 ms, 0.3 s is not yet "more than")
    assert p.missing == ("back",) and changed.index(True) == 6
    # a lone frame after the silence does not bring it back; the next one in step does
    assert not p.observe("back", 650 * MS)
    p.observe("front", 700 * MS)
    assert p.observe("back", 750 * MS) and p.missing == ()
    # stale frames (stamps lagging 1 s behind the others) are missing too, consecutive or not
    for k in range(8, 14):
        p.observe("front", k * 100 * MS)
        p.observe("left", k * 100 * MS)
        p.observe("back", (k - 10) * 100 * MS + 1)
    assert p.missing == ("back",)


def test_presence_never_heard_from_and_everything_stopping():
    p = StreamPresence(CAMS, timeout_s=0.3, jump_s=2.0)
    for k in range(3):
        p.observe("front", k * 100 * MS)
        p.observe("left", k * 100 * MS)
    assert p.missing == ()  # 0.2 s since the first stamp seen
    p.observe("front", 400 * MS)
    assert p.missing == ("back",)
    p.reset()
    assert p.missing == () and not p.observe("left", 10 * MS)
    with pytest.raises(ValueError, match="timeout_s"):
        StreamPresence(CAMS, 0.0, 1.0)
    with pytest.raises(ValueError, match="jump_s"):
        StreamPresence(CAMS, 1.0, 1.0)
    with pytest.raises(KeyError, match="unknown stream"):
        p.observe("radar", 0)


def test_presence_starts_over_after_a_clock_jump():
    p = StreamPresence(CAMS, timeout_s=0.3, jump_s=1.0)
    for c in CAMS:  # e.g. probe messages stamped near 0 before the data starts
        p.observe(c, 1)
    # the data starts at 100 s, the cameras 1 ms apart: nobody lags, nobody is missing
    assert not p.observe("front", 100_000 * MS)
    assert not p.observe("back", 2)  # a probe delivered late: ignored, "back" is not stale
    assert not any(p.observe(c, 100_000 * MS + i * MS) for i, c in enumerate(CAMS))
    for k in range(1, 5):
        p.observe("front", (100_000 + 100 * k) * MS)
        p.observe("left", (100_000 + 100 * k) * MS)
    assert p.missing == ("back",)
    # the bag loops back to 10 s: a fresh start, "back" is not missing until it lags again
    assert p.observe("front", 10_000 * MS) and p.missing == ()
    assert not p.observe("left", 10_001 * MS) and not p.observe("back", 10_002 * MS)


def test_sets_form_without_a_suspended_stream_and_need_it_again_after():
    pol = ApproximateTimePolicy(CAMS, SyncConfig(slop_s=0.02, queue_size=5))
    pol.add("back", 100 * MS, "b-queued")  # dropped when suspended
    pol.set_suspended(["back"])
    assert pol.suspended == ("back",) and pol.counters.streams["back"].dropped == 1
    pol.add("front", 200 * MS, "f")
    out = pol.add("left", 205 * MS, "l")
    assert out.missing == ("back",) and out.messages == ("f", "l", None)
    assert out.stamps_ns == (200 * MS, 205 * MS, None) and out.stamp_ns == 200 * MS
    assert pol.add("back", 206 * MS, "b") is None  # counted, not used
    assert pol.counters.streams["back"].suspended == 1
    # the pivot ("front") suspended: the first present stream gives the reference stamp
    pol.set_suspended(["front"])
    pol.add("left", 300 * MS, "l")
    out = pol.add("back", 303 * MS, "b")
    assert out.stamp_ns == 300 * MS and out.missing == ("front",)
    pol.set_suspended([])
    pol.add("front", 400 * MS, "f")
    assert pol.add("left", 400 * MS, "l") is None  # every stream is required again
    out = pol.add("back", 401 * MS, "b")
    assert out.missing == () and out.messages == ("f", "l", "b")
    queued = pol.queued()
    for name, c in pol.counters.streams.items():
        assert c.received == c.matched + c.dropped + c.late + c.suspended + queued[name]
    with pytest.raises(ValueError, match="every required"):
        pol.set_suspended(CAMS)
    with pytest.raises(KeyError, match="not required"):
        pol.set_suspended(["radar"])
