"""Approximate-time synchronisation of N message streams (pure, no ROS).

Semantics follow ros2/message_filters' Python ``ApproximateTimeSynchronizer``: each stream keeps a
bounded queue ordered by stamp; when a message arrives, the policy looks for one message per other
stream so that the whole set, including the new message, spans at most ``slop``. When such a set
exists it is emitted and its messages leave their queues.

Where message_filters enumerates ``itertools.product`` over all queues (exponential in the number
of streams: 7 inputs with 10 queued messages each is 10^6 combinations per arrival), this policy
solves the same question exactly in O(N log N + N·Q) per message: a set containing the new stamp
``t`` lies in a window ``[t - a, t + b]`` with ``a + b <= slop``, and for each stream only its
nearest stamp at or before ``t`` and its nearest stamp after ``t`` matter, so the minimal-spread
window is found by one sweep over the N "left distances". Where every stream has at most one
candidate within ``slop`` (message_filters' result is then unique) both form the same sets.

Differences, chosen for a detector that consumes the sets in time order:

- output is monotonic: after a set is emitted, older queued messages are dropped (counted) and a
  message not newer than the last emitted message of its stream is *late* (counted, dropped);
- a stamp more than ``reset_after_jump_s`` older than the last emitted reference stamp is a
  clock jump backwards (bag loop, simulator restart): queues are cleared, ``resets`` counted,
  and the ``on_reset`` callback runs so temporal state downstream can be forgotten;
- *optional* streams (e.g. odometry) never hold a set back: each emitted set carries the optional
  stream's message nearest to the reference stamp within ``optional_max_age_s``, or ``None``;
- a required stream can be *suspended* (:meth:`ApproximateTimePolicy.set_suspended`, e.g. a
  camera known to be missing, see :mod:`qd_perception.sync.presence`): sets then form without it
  and name it in ``SyncedSet.missing``, until it is resumed.

Stamps are integer nanoseconds (``builtin_interfaces/Time`` as ``sec * 10**9 + nanosec``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

M = TypeVar("M")

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SyncConfig:
    """Approximate-time policy settings.

    slop_s: largest spread (max stamp - min stamp) of a set, seconds.
    queue_size: messages kept per stream waiting for partners (oldest dropped beyond it).
    reset_after_jump_s: a stamp this much older than the last emitted set resets the policy.
    optional_max_age_s: largest |stamp - reference| of an optional stream's message in a set.
    """

    slop_s: float = 0.05
    queue_size: int = 10
    reset_after_jump_s: float = 1.0
    optional_max_age_s: float = 0.2

    def __post_init__(self) -> None:
        if not (self.slop_s >= 0 and math.isfinite(self.slop_s)):
            raise ValueError(f"slop_s must be a finite number >= 0, got {self.slop_s}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.reset_after_jump_s <= self.slop_s:
            raise ValueError("reset_after_jump_s must be larger than slop_s")
        if self.optional_max_age_s < 0:
            raise ValueError("optional_max_age_s must be >= 0")


@dataclass
class StreamCounters:
    """Per-stream counters. ``received = matched + dropped + late + suspended + queued``."""

    received: int = 0
    matched: int = 0
    dropped: int = 0  # evicted by queue size or superseded by a newer emitted set
    late: int = 0  # not newer than what was already emitted
    suspended: int = 0  # arrived while the stream was suspended (not used)


@dataclass
class SyncCounters:
    sets: int = 0
    resets: int = 0
    streams: dict[str, StreamCounters] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sets": self.sets,
            "resets": self.resets,
            "streams": {k: vars(v).copy() for k, v in self.streams.items()},
            "dropped": sum(v.dropped for v in self.streams.values()),
            "late": sum(v.late for v in self.streams.values()),
        }


@dataclass(frozen=True)
class SyncedSet(Generic[M]):
    """One emitted set. ``messages[i]`` belongs to ``required[i]``; stamps in ns.

    A stream suspended when the set formed is named in ``missing``; its message and stamp are None.
    """

    stamp_ns: int  # reference stamp: the pivot stream's stamp (the first present one if suspended)
    stamps_ns: tuple[int | None, ...]
    messages: tuple[M | None, ...]
    optional: dict[str, M | None]
    missing: tuple[str, ...] = ()


class _Queue(Generic[M]):
    """Messages of one stream sorted by stamp (ties keep arrival order)."""

    __slots__ = ("msgs", "stamps")

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.msgs: list[M] = []

    def insert(self, stamp: int, msg: M) -> None:
        i = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(i, stamp)
        self.msgs.insert(i, msg)

    def nearest_around(self, t: int) -> tuple[int | None, int | None]:
        """Indices of the latest stamp <= t and the earliest stamp > t (None where absent)."""
        i = bisect.bisect_right(self.stamps, t)
        return (i - 1 if i > 0 else None), (i if i < len(self.stamps) else None)

    def drop_through(self, stamp: int) -> int:
        """Remove every message with stamp <= ``stamp``; returns how many."""
        i = bisect.bisect_right(self.stamps, stamp)
        del self.stamps[:i], self.msgs[:i]
        return i

    def pop_oldest(self) -> None:
        del self.stamps[0], self.msgs[0]

    def clear(self) -> int:
        n = len(self.stamps)
        self.stamps.clear()
        self.msgs.clear()
        return n

    def __len__(self) -> int:
        return len(self.stamps)


class ApproximateTimePolicy(Generic[M]):
    """Approximate-time synchroniser over ``required`` streams plus ``optional`` ones.

    Feed messages with :meth:`add`; it returns the :class:`SyncedSet` the message completed, or
    ``None``. ``pivot`` names the stream whose stamp becomes the set's reference stamp (the lidar
    for a lidar detector). Not thread-safe: call from one thread (rclpy's default executor).
    """

    def __init__(
        self,
        required: Sequence[str],
        config: SyncConfig | None = None,
        optional: Sequence[str] = (),
        pivot: str | None = None,
        on_reset: Callable[[str], None] | None = None,
    ) -> None:
        if not required:
            raise ValueError("at least one required stream")
        names = [*required, *optional]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stream names in {names}")
        self.config = config or SyncConfig()
        self.required = tuple(required)
        self.optional_names = tuple(optional)
        self.pivot = pivot or self.required[0]
        if self.pivot not in self.required:
            raise ValueError(f"pivot {self.pivot!r} is not a required stream {self.required}")
        self._pivot_i = self.required.index(self.pivot)
        self._index = {n: i for i, n in enumerate(self.required)}
        self._slop = round(self.config.slop_s * NS_PER_S)
        self._jump = round(self.config.reset_after_jump_s * NS_PER_S)
        self._opt_age = round(self.config.optional_max_age_s * NS_PER_S)
        self._queues: list[_Queue[M]] = [_Queue() for _ in self.required]
        self._optional: dict[str, _Queue[M]] = {n: _Queue() for n in self.optional_names}
        self._last_emitted: list[int | None] = [None] * len(self.required)
        self._last_ref: int | None = None
        self._suspended: frozenset[int] = frozenset()
        self._on_reset = on_reset
        self.counters = SyncCounters(streams={n: StreamCounters() for n in names})

    # -- public API ------------------------------------------------------------------------
    def add(self, stream: str, stamp_ns: int, msg: M) -> SyncedSet[M] | None:
        """Offer one message; returns the set it completed, if any."""
        stamp_ns = int(stamp_ns)
        if stream in self._optional:
            return self._add_optional(stream, stamp_ns, msg)
        i = self._index.get(stream)
        if i is None:
            raise KeyError(f"unknown stream {stream!r}; streams: {self.required + self.optional_names}")
        c = self.counters.streams[stream]
        c.received += 1
        if i in self._suspended:
            c.suspended += 1
            return None
        if self._last_ref is not None and stamp_ns < self._last_ref - self._jump:
            self.reset(
                f"clock jumped back on {stream!r}: {stamp_ns / 1e9:.3f} s "
                f"after a set at {self._last_ref / 1e9:.3f} s"
            )
        last = self._last_emitted[i]
        if (last is not None and stamp_ns <= last) or (
            self._last_ref is not None and stamp_ns < self._last_ref - self._slop
        ):
            c.late += 1
            return None
        q = self._queues[i]
        q.insert(stamp_ns, msg)
        while len(q) > self.config.queue_size:
            q.pop_oldest()
            c.dropped += 1
        return self._try_match(i, stamp_ns)

    def reset(self, reason: str = "reset") -> None:
        """Forget every queued message and the emitted history (queued ones count as dropped)."""
        for name, q in zip(self.required, self._queues):
            self.counters.streams[name].dropped += q.clear()
        for name, q in self._optional.items():
            self.counters.streams[name].dropped += q.clear()
        self._last_emitted = [None] * len(self.required)
        self._last_ref = None
        self.counters.resets += 1
        if self._on_reset is not None:
            self._on_reset(reason)

    def queued(self) -> dict[str, int]:
        return {n: len(q) for n, q in zip(self.required, self._queues)}

    @property
    def suspended(self) -> tuple[str, ...]:
        """The suspended required streams, in ``required`` order."""
        return tuple(n for j, n in enumerate(self.required) if j in self._suspended)

    def set_suspended(self, streams: Sequence[str]) -> None:
        """Form sets without ``streams`` (required streams known to be missing) until a later
        call no longer names them; at least one required stream must stay.

        A newly suspended stream's queued messages are dropped (counted) and its later messages
        are counted as ``suspended`` and not used; a resumed stream is required again from its
        next message on. The reset of :meth:`reset` leaves the suspension as it is.
        """
        unknown = sorted(set(streams) - set(self.required))
        if unknown:
            raise KeyError(f"cannot suspend {unknown}: not required streams {self.required}")
        new = frozenset(self._index[n] for n in streams)
        if len(new) == len(self.required):
            raise ValueError("cannot suspend every required stream")
        for j in new - self._suspended:
            self.counters.streams[self.required[j]].dropped += self._queues[j].clear()
        self._suspended = new

    # -- internals -------------------------------------------------------------------------
    def _add_optional(self, stream: str, stamp_ns: int, msg: M) -> None:
        c = self.counters.streams[stream]
        c.received += 1
        q = self._optional[stream]
        q.insert(stamp_ns, msg)
        # Optional messages are only looked up, never matched: keep a generous window of them.
        while len(q) > max(self.config.queue_size, 4) * 4:
            q.pop_oldest()  # superseded, not lost: not counted as dropped
        return None

    def _try_match(self, i: int, t: int) -> SyncedSet[M] | None:
        slop = self._slop
        n = len(self._queues)
        # For each other stream: distance to its nearest stamp at/before t (left) and after t.
        left_d: list[float] = [0.0] * n
        right_d: list[float] = [0.0] * n
        left_i: list[int | None] = [None] * n
        right_i: list[int | None] = [None] * n
        for j, q in enumerate(self._queues):
            if j == i or j in self._suspended:
                continue
            li, ri = q.nearest_around(t)
            dl = t - q.stamps[li] if li is not None else math.inf
            dr = q.stamps[ri] - t if ri is not None else math.inf
            if dl > slop and dr > slop:
                return None
            left_d[j], right_d[j], left_i[j], right_i[j] = dl, dr, li, ri
        # Window [t - a, t + b]: choose a among {0, left distances}; streams whose left
        # distance exceeds a need their right stamp, so b = max of their right distances.
        order = sorted((j for j in range(n) if j != i and j not in self._suspended), key=lambda j: left_d[j])
        best: tuple[float, float, float] | None = None  # (spread, a, b)
        suffix_max_right = [0.0] * (len(order) + 1)
        for k in range(len(order) - 1, -1, -1):
            suffix_max_right[k] = max(suffix_max_right[k + 1], right_d[order[k]])
        for k in range(len(order) + 1):
            a = left_d[order[k - 1]] if k > 0 else 0.0
            if a > slop:
                break
            b = suffix_max_right[k]
            if a + b <= slop and (best is None or a + b < best[0]):
                best = (a + b, a, b)
        if best is None:
            return None
        _, a, b = best
        chosen: list[int] = [0] * n
        chosen[i] = -1
        for j in range(n):
            if j == i or j in self._suspended:
                continue
            ok_l, ok_r = left_d[j] <= a, right_d[j] <= b
            if ok_l and (not ok_r or left_d[j] <= right_d[j]):
                chosen[j] = left_i[j]  # type: ignore[assignment]
            else:
                chosen[j] = right_i[j]  # type: ignore[assignment]
        return self._emit(i, t, chosen)

    def _emit(self, i: int, t: int, chosen: list[int]) -> SyncedSet[M]:
        stamps: list[int | None] = []
        msgs: list[M | None] = []
        for j, q in enumerate(self._queues):
            if j in self._suspended:
                stamps.append(None)
                msgs.append(None)
                continue
            k = bisect.bisect_right(q.stamps, t) - 1 if j == i else chosen[j]  # i: just inserted
            stamps.append(q.stamps[k])
            msgs.append(q.msgs[k])
        for j, (name, q) in enumerate(zip(self.required, self._queues)):
            stamp = stamps[j]
            if stamp is None:
                continue
            removed = q.drop_through(stamp)
            c = self.counters.streams[name]
            c.matched += 1
            c.dropped += removed - 1  # older unmatched messages can no longer form a newer set
            self._last_emitted[j] = stamp
        ref = stamps[self._pivot_i]
        if ref is None:  # the pivot is suspended: the first present stream gives the reference
            ref = next(st for st in stamps if st is not None)
        self._last_ref = ref
        self.counters.sets += 1
        optional = {name: self._take_optional(name, q, ref) for name, q in self._optional.items()}
        return SyncedSet(ref, tuple(stamps), tuple(msgs), optional, self.suspended)

    def _take_optional(self, name: str, q: _Queue[M], ref: int) -> M | None:
        li, ri = q.nearest_around(ref)
        best: int | None = None
        best_d = self._opt_age
        for k in (li, ri):
            if k is not None and abs(q.stamps[k] - ref) <= best_d:
                best, best_d = k, abs(q.stamps[k] - ref)
        if best is None:
            return None
        self.counters.streams[name].matched += 1
        return q.msgs[best]


def stamp_to_ns(sec: int, nanosec: int) -> int:
    """``builtin_interfaces/Time`` fields -> integer nanoseconds."""
    return int(sec) * NS_PER_S + int(nanosec)
