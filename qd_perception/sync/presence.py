"""Which input streams are missing, judged on message stamps (pure, no ROS).

A stream is *missing* once the inputs have moved on without it: the newest stamp of any other
stream is more than ``timeout_s`` past its own newest stamp (silent, or delivering stale frames),
or past the first stamp seen at all for a stream never heard from. It is *back* when two of its
stamps in a row lie at most ``timeout_s`` apart and the newer is within ``timeout_s`` of the
others' newest: it streams again, at a usable rate, in step with the rest (one stray or late
frame does not bring it back only to be missed again a moment later).

Judged on stamps, not arrival times, so a bag replayed at any rate or under sim time behaves like
the live run. When every input stops, nothing moves on and nothing becomes missing (the end of a
bag is not a camera failure). A stamp more than ``jump_s`` after every stamp seen, or before its
own stream's newest, is a clock jump (a bag looping, a simulator restarting): the tracker starts
over from it, so the streams that follow the jump within ``timeout_s`` are not missing. Any other
message more than ``jump_s`` behind the others (one delivered late from before a jump, a sensor
clock far behind) is ignored: it neither counts as the stream's newest nor moves the others.
Feed only accepted messages (after the input checks): a camera whose every image is refused is
missing too.
"""

from __future__ import annotations

from collections.abc import Sequence


class StreamPresence:
    """Missing-stream tracker over ``streams`` (see the module docstring); stamps in ns.

    ``jump_s``: the synchroniser's ``reset_after_jump_s``; it must exceed ``timeout_s``.
    """

    def __init__(self, streams: Sequence[str], timeout_s: float, jump_s: float) -> None:
        if not 0 < timeout_s < jump_s:
            raise ValueError(f"need 0 < timeout_s < jump_s, got timeout_s={timeout_s}, jump_s={jump_s}")
        self.streams = tuple(streams)
        self._timeout = round(timeout_s * 1e9)
        self._jump = round(jump_s * 1e9)
        self.reset()

    def reset(self) -> None:
        """Forget every stamp (a clock jump): no stream is missing until the inputs move on again."""
        self._newest: dict[str, int] = {}
        self._first: int | None = None
        self._missing: set[str] = set()

    @property
    def missing(self) -> tuple[str, ...]:
        """The missing streams, in ``streams`` order."""
        return tuple(s for s in self.streams if s in self._missing)

    def observe(self, stream: str, stamp_ns: int) -> bool:
        """Account one accepted message of ``stream``; True when :attr:`missing` changed."""
        if stream not in self.streams:
            raise KeyError(f"unknown stream {stream!r}; streams: {self.streams}")
        before = set(self._missing)
        own = self._newest.get(stream)
        if self._newest and (
            stamp_ns > max(self._newest.values()) + self._jump
            or (own is not None and stamp_ns < own - self._jump)
        ):
            self.reset()
        elif self._newest and stamp_ns < max(self._newest.values()) - self._jump:
            return False  # a stray message from long before the others, not its stream jumping
        prev = self._newest.get(stream)
        if self._first is None:
            self._first = stamp_ns
        if prev is None or stamp_ns > prev:
            self._newest[stream] = stamp_ns
        newest = self._newest[stream]
        others = [t for s, t in self._newest.items() if s != stream]
        if stream in self._missing:
            in_step = not others or max(others) - newest <= self._timeout
            if prev is not None and 0 < stamp_ns - prev <= self._timeout and in_step:
                self._missing.discard(stream)
        front = max(self._newest.values())
        for s in self.streams:
            if s not in self._missing and front - self._newest.get(s, self._first) > self._timeout:
                self._missing.add(s)
        return self._missing != before
