"""A logger that costs nothing until a message is due.

``import logging`` pulls in ``re``, ``traceback``, ``enum`` and ``string``: about a tenth of
microvm's whole start-up budget. Core modules therefore log through :func:`get_logger`,
which forwards to the standard :mod:`logging` logger of the same name as soon as logging is
imported by anyone (tests' caplog, an embedding program, ``-v``), and before that imports
it only for a message at or above the CLI's threshold (WARNING unless ``-v``).
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
#: messages below this level are dropped while logging is not imported
_threshold = WARNING
#: called once with the logging module when it is first needed (the CLI's format)
_configure: Callable[[Any], None] | None = None


def set_threshold(level: int, configure: Callable[[Any], None] | None = None) -> None:
    global _threshold, _configure
    _threshold = level
    _configure = configure
    if "logging" in sys.modules or level < WARNING:
        _real_logging()


def _real_logging() -> Any:
    global _configure
    import logging

    if _configure is not None:
        configure, _configure = _configure, None
        configure(logging)
    return logging


class Logger:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _logger(self, level: int) -> Any:
        if "logging" in sys.modules:
            return _real_logging().getLogger(self.name)
        if level >= _threshold:
            return _real_logging().getLogger(self.name)
        return None

    def log(self, level: int, msg: str, *args: Any, **kw: Any) -> None:
        lg = self._logger(level)
        if lg is not None:
            held = getattr(_held, "lines", None)
            if held is not None:
                _hold(held, lg, level, msg, args, kw)
                return
            kw.setdefault("stacklevel", 2)
            lg.log(level, msg, *args, **kw)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        if "logging" in sys.modules or DEBUG >= _threshold:
            self.log(DEBUG, msg, *args, stacklevel=3, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(INFO, msg, *args, stacklevel=3, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(WARNING, msg, *args, stacklevel=3, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(ERROR, msg, *args, stacklevel=3, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self.log(ERROR, msg, *args, stacklevel=3, **kw)

    def isEnabledFor(self, level: int) -> bool:
        lg = self._logger(level)
        return lg is not None and lg.isEnabledFor(level)


def get_logger(name: str) -> Logger:
    return Logger(name)


# ---- lines held while a thread holds a lock no write may block -------------------------------
#: per thread: the log lines and say() texts held back (a list), or None
_held = threading.local()
#: lines held per thread at most (a section logging without bound keeps a count instead)
MAX_HELD = 256


def hold_logs() -> bool:
    """From now on this thread's log lines and :func:`say` texts are kept, not written, until
    :func:`release_logs`: for a critical section (the run-state lock) that must never wait
    on stderr (a ``-v`` log into a pipe nobody reads). True if this call began holding
    (the caller then releases); False if an enclosing section already holds."""
    if getattr(_held, "lines", None) is not None:
        return False
    _held.lines = []
    _held.dropped = 0
    return True


def release_logs() -> None:
    """Write what :func:`hold_logs` kept, in order (call after leaving the critical section)."""
    lines = getattr(_held, "lines", None)
    dropped = getattr(_held, "dropped", 0)
    _held.lines = None
    if not lines:
        return
    for fn, args, kw in lines:
        try:
            fn(*args, **kw)
        except Exception:  # a log line must not end the caller
            pass
    if dropped:
        fn, args, _ = lines[-1]
        if fn is not say:
            fn(args[0], "%d more log lines from one critical section were dropped", dropped)


def _hold(held: list[Any], lg: Any, level: int, msg: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    if not lg.isEnabledFor(level):
        return
    if len(held) >= MAX_HELD:
        _held.dropped += 1
        return
    if kw.get("exc_info") is True:  # the exception is the current one now, not at release
        kw["exc_info"] = sys.exc_info()
    kw.pop("stacklevel", None)
    held.append((lg.log, (level, msg, *args), kw))


# ---- events a guest can repeat without bound ----------------------------------------------
#: ``-d guest_errors`` (and ``-v``): log every guest-triggered event, as QEMU's
#: ``-d guest_errors`` does; by default only the first of each kind and periodic summaries
_every_event = False


def log_every_event(on: bool) -> None:
    global _every_event
    _every_event = on


class EventLog:
    """Log lines for events a guest (or a failing host disk) can repeat without bound: an
    ignored register write, a malformed request, a host I/O error per request.

    The first event of each kind is logged in full (device, register, value); repeats are
    counted (the caller's counter, e.g. a device's ``guest_errors``) and folded into one
    summary line per kind at most every ``interval`` seconds, so a looping guest cannot fill
    the host's disk through the VMM's log (60,000 ignored writes used to be 60,000 lines).
    With :func:`log_every_event` on, every event is logged.
    """

    __slots__ = ("logger", "interval", "_seen", "_lock")

    #: at most this many kinds are remembered; beyond, events share one "(other)" kind
    MAX_KINDS = 4096

    def __init__(self, logger: Logger, interval: float = 10.0) -> None:
        import threading

        self.logger = logger
        self.interval = interval
        self._seen: dict[str, list[float]] = {}  # kind -> [time of the last line, repeats since]
        self._lock = threading.Lock()

    def __call__(self, kind: str, level: int, msg: str, *args: Any, **kw: Any) -> None:
        """One event of ``kind`` (a short label naming the device and what happened)."""
        if _every_event:
            self.logger.log(level, msg, *args, stacklevel=3, **kw)
            return
        import time

        now = time.monotonic()
        summary = 0
        with self._lock:
            if kind not in self._seen and len(self._seen) >= self.MAX_KINDS:
                kind = "(other events)"
            st = self._seen.get(kind)
            if st is None:
                self._seen[kind] = [now, 0.0]
            else:
                st[1] += 1
                if now - st[0] >= self.interval:
                    summary, st[0], st[1] = int(st[1]), now, 0.0
                else:
                    return
        if summary:
            self.logger.log(level, "%s: %d more in the last %d s (-d guest_errors logs each)", kind, summary,
                            int(self.interval), stacklevel=3)
        else:
            self.logger.log(level, msg + " (repeats are counted, not logged; -d guest_errors logs each)", *args,
                            stacklevel=3, **kw)


def say(text: str, stream: Any = None) -> None:
    """Write ``text`` to stderr (or ``stream``) for the user, dropping it when the stream is
    closed or a broken pipe: the VMM's own messages must never end the VMM."""
    held = getattr(_held, "lines", None)
    if held is not None:
        if len(held) < MAX_HELD:
            held.append((say, (text, stream), {}))
        return
    s = sys.stderr if stream is None else stream
    try:
        s.write(text)
        s.flush()
    except (OSError, ValueError, AttributeError):
        pass
