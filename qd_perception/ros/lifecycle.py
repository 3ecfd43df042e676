"""Process lifecycle of the package's executables: signals, the spin loop and the teardown order.

Every node executable (the detector nodes, the calibration recorder, the recorder) runs
:func:`run_node`; the bag player, which publishes from its own loop, uses :class:`StopRequest`.
All of them exit 0 on SIGINT and SIGTERM, with no traceback, whenever the signal arrives
(while the model loads, while messages are being taken, during teardown, twice in a row).

**Why the signal handlers only set a flag.** A Python signal handler runs in the main thread
between two bytecodes, wherever that thread is. rclpy's executor takes each message by calling
into C++ (``take_message``), which builds the Python message by calling Python code (the
message class). A handler that raises there (``KeyboardInterrupt``) cannot cross the pybind11
boundary: it surfaces as ``RuntimeError: Unable to convert call argument '0' to Python object``
and the node dies with exit code 1 (about 1 SIGTERM in 7 while clouds were arriving). The same
handler raising inside ``destroy_node`` on a second signal (``ros2 launch`` escalates SIGINT to
SIGTERM; a double Ctrl-C) broke the teardown the same way. rclpy's own handlers
(``SignalHandlerOptions.ALL``) are not used either: they shut the context down from the handler,
under the executor and any worker thread still publishing, before the node could log its summary.

**Order.** The main loop calls ``executor.spin_once(period_s)`` until a stop is requested, so a
signal is acted on within ``period_s`` plus one callback. Then, in this order:

1. ``executor.shutdown()``: no callback is running or will run (a multi-threaded executor waits
   for its threads);
2. ``finish(node)``: the node's own stop (join worker threads, write files) and its summary log,
   while the context is valid, so ROS logging and publishing still work;
3. ``node.destroy_node()``, then ``rclpy.try_shutdown()``.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from qd_perception.config import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A stop requested by SIGINT / SIGTERM: recorded, never raised.

    The handler does only signal-safe work (set an event, call ``on_request`` callbacks that
    must themselves only set flags). :meth:`install` replaces the process's handlers.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self.signal_name: str | None = None  # the first signal received, for the logs

    @classmethod
    def install(cls, signals: Sequence[int] = STOP_SIGNALS) -> StopRequest:
        req = cls()
        for s in signals:
            signal.signal(s, req._handle)
        return req

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self.request()

    def request(self) -> None:
        self._event.set()
        for cb in self._callbacks:
            cb()

    def on_request(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` on a stop request (at once if one was already made)."""
        self._callbacks.append(cb)
        if self._event.is_set():
            cb()

    def is_set(self) -> bool:
        return self._event.is_set()


def run_node(
    name: str,
    build: Callable[[], Any],
    *,
    args: list[str] | None = None,
    threads: int = 1,
    tick: Callable[[Any], None] | None = None,
    finish: Callable[[Any], None] | None = None,
    period_s: float = 0.1,
) -> int:
    """Run one node in this process until SIGINT / SIGTERM; returns the exit code.

    ``build()`` creates the node after ``rclpy.init(args)``; a :class:`ConfigError` or
    ``ValueError`` from it is printed as a configuration error (exit code 2, no traceback).
    ``threads > 1`` spins a ``MultiThreadedExecutor`` (callback groups of the node run in
    parallel). ``tick(node)`` runs in the main loop between two spins; ``finish(node)`` runs
    once after the executor has stopped and before the node is destroyed (see the module
    docstring for the order). Exit code 0 after a signal.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = StopRequest.install()
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = None
    try:
        try:
            node = build()
        except (ConfigError, ValueError) as e:
            print(f"[{name}] configuration error: {e}", file=sys.stderr, flush=True)
            return 2
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            if tick is not None:
                tick(node)
            executor.spin_once(timeout_sec=period_s)
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            try:
                if finish is not None:
                    finish(node)
            finally:
                node.destroy_node()
        rclpy.try_shutdown()
    return 0
