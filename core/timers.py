"""One thread that fires the timed interrupts of the legacy devices (PIT, RTC).

Devices do not start threads of their own: each exposes ``next_deadline() -> int | None``
(nanoseconds on the monotonic clock) and ``tick(now_ns)``, which raises whatever became due.
The service sleeps until the earliest deadline; a device whose programming changes calls
:meth:`TimerService.wake` (its ``on_timer_change``) so the service looks again. Time is the
host's clock, not a count of exits, as on a real board.

While the machine is paused (QMP ``stop``, ``-S``) nothing fires: :meth:`TimerService.pause`
returns once no ``tick`` is running, and :meth:`TimerService.resume` lets the deadlines that
fell due meanwhile fire at once (each device coalesces what it missed, as after a late tick).
The devices keep the host's clock: unlike QEMU's virtual clock it does not stop while paused
(see docs/qmp.md).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Protocol
from .log import get_logger

log = get_logger("microvm.timers")

#: Shortest sleep between ticks. A guest can program a PIT period below a microsecond;
#: the devices coalesce the edges a late tick missed, so sleeping at least this long keeps
#: the thread from spinning without losing the guest's notion of time.
MIN_SLEEP_NS = 50_000


class TimedDevice(Protocol):
    def next_deadline(self) -> int | None: ...

    def tick(self, now_ns: int) -> None: ...


class TimerService:
    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.devices: list[TimedDevice] = []
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._paused = False
        #: held for each pass over the devices, so pause() can wait for a tick in progress
        self._tick_lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def add(self, device: TimedDevice) -> None:
        self.devices.append(device)
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def start(self) -> None:
        if self.devices and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="timers", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def pause(self) -> None:
        """Stop firing; returns when no device's ``tick`` is running. Any thread; idempotent."""
        with self._cond:
            self._paused = True
            self._cond.notify()
        with self._tick_lock:  # a pass that started before the flag was set has ended
            pass

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._dirty = True
            self._cond.notify()

    @property
    def paused(self) -> bool:
        return self._paused

    def _tick_all(self) -> int | None:
        now = self.clock()
        earliest = None
        for dev in self.devices:
            try:
                d = dev.next_deadline()
                if d is not None and d <= now:
                    dev.tick(now)
                    d = dev.next_deadline()
            except Exception:  # a device bug must not stop the other timers
                log.exception("timer of %s failed", type(dev).__name__)
                d = None
            if d is not None and (earliest is None or d < earliest):
                earliest = d
        return earliest

    def _run(self) -> None:
        while True:
            earliest = None
            with self._tick_lock:
                if not self._paused:
                    earliest = self._tick_all()
            with self._cond:
                if self._stopping:
                    return
                if self._paused:
                    while self._paused and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    continue
                if not self._dirty:
                    timeout = None if earliest is None else max(earliest - self.clock(), MIN_SLEEP_NS) / 1e9
                    self._cond.wait(timeout)
                self._dirty = False
                if self._stopping:
                    return
