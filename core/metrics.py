"""Counters: what a VM is doing, readable without a debugger (Firecracker's metrics are the model).

Every device gets a :class:`CounterGroup` (bus accesses, virtio notifications, interrupts,
bytes moved, failed requests, entries into DEVICE_NEEDS_RESET), every vCPU counts its exits
by reason, and :class:`Metrics` collects them into one snapshot, written as JSON at exit
with ``microvm run --metrics FILE``.

Cheap enough to stay on: bumping a counter takes no lock. :meth:`Counter.inc` is one call
of a C-implemented ``itertools.count`` (atomic under the GIL, as Firecracker's
``SharedIncMetric`` is an atomic add); :meth:`Counter.add` keeps one partial sum per
thread, so concurrent writers never lose an update. Reading sums the parts.
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Iterator

__all__ = ["Counter", "CounterGroup", "Metrics"]

_get_ident = threading.get_ident


class Counter:
    """A monotonically increasing count, safe to bump from any thread without a lock."""

    __slots__ = ("_events", "_sums", "inc")

    def __init__(self) -> None:
        self._events = itertools.count()
        self._sums: dict[int, int] = {}
        #: add one (the bound ``__next__`` of the event count: no Python frame per call)
        self.inc: Callable[[], Any] = self._events.__next__

    def add(self, n: int) -> None:
        """Add ``n`` (bytes moved, say). Each thread adds to its own partial sum."""
        tid = _get_ident()
        sums = self._sums
        sums[tid] = sums.get(tid, 0) + n

    @property
    def value(self) -> int:
        # repr is "count(N)": the next value itertools.count would return, i.e. the events so far
        return int(repr(self._events)[6:-1]) + sum(list(self._sums.values()))

    def __repr__(self) -> str:
        return f"Counter({self.value})"


class CounterGroup:
    """The named counters of one device (or of anything else that counts)."""

    __slots__ = ("name", "_counters", "_lock")

    def __init__(self, name: str) -> None:
        self.name = name
        self._counters: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def counter(self, name: str) -> Counter:
        """The counter ``name`` of this group, created at zero on first use. Look counters up
        once (when the device is made or activated), not on every event."""
        c = self._counters.get(name)
        if c is None:
            with self._lock:
                c = self._counters.setdefault(name, Counter())
        return c

    def adopt(self, other: "CounterGroup") -> None:
        """Take over the counters of ``other`` (a device's group made before the device was
        placed): the same Counter objects, so what was bound to them keeps counting here."""
        with self._lock:
            for name, c in other._counters.items():
                mine = self._counters.get(name)
                if mine is None:
                    self._counters[name] = c
                elif mine is not c:
                    mine.add(c.value)

    def __getitem__(self, name: str) -> int:
        """The current value of counter ``name`` (0 when it was never created)."""
        c = self._counters.get(name)
        return 0 if c is None else c.value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._counters))

    def snapshot(self) -> dict[str, int]:
        return {name: c.value for name, c in sorted(self._counters.items())}

    def __repr__(self) -> str:
        return f"CounterGroup({self.name!r}, {self.snapshot()})"


class Metrics:
    """All counters of one VMM process (they go on across guest reboots).

    ``group(section, name)`` gives a :class:`CounterGroup` (sections: ``devices``, ``irqs``,
    ...); ``add_source(section, name, fn)`` adds a group read by calling ``fn`` (the vCPU
    threads' exit counts, kept in plain lists by their single writer).
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], CounterGroup] = {}
        self._sources: dict[tuple[str, str], Callable[[], dict[str, int]]] = {}
        self._lock = threading.Lock()

    def group(self, section: str, name: str) -> CounterGroup:
        key = (section, name)
        g = self._groups.get(key)
        if g is None:
            with self._lock:
                g = self._groups.setdefault(key, CounterGroup(name))
        return g

    def add_source(self, section: str, name: str, fn: Callable[[], dict[str, int]]) -> None:
        """Report ``fn()`` as group ``name`` of ``section``; a later source of the same name
        (the next boot's vCPU) is added to what the earlier ones counted."""
        key = (section, name)
        with self._lock:
            prev = self._sources.get(key)
            if prev is None:
                self._sources[key] = fn
            else:
                frozen = prev()

                def merged() -> dict[str, int]:
                    out = dict(frozen)
                    for k, v in fn().items():
                        out[k] = out.get(k, 0) + v
                    return out

                self._sources[key] = merged

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{section: {group: {counter: value}}}``, sorted, for JSON."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        with self._lock:
            groups = list(self._groups.items())
            sources = list(self._sources.items())
        for (section, name), g in groups:
            out.setdefault(section, {})[name] = g.snapshot()
        for (section, name), fn in sources:
            out.setdefault(section, {})[name] = fn()
        return {s: dict(sorted(v.items())) for s, v in sorted(out.items())}

    def write_json(self, path: str) -> None:
        """Write :meth:`snapshot` to ``path`` (atomically: a reader never sees half a file)."""
        import json
        import os

        from . import __version__

        data = {"microvm": __version__, **self.snapshot()}
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=False)
                f.write("\n")
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def check_metrics_path(path: str) -> None:
    """Refuse a ``--metrics`` path that cannot be written, before the VM runs (one line,
    status 2), rather than after it: an empty path, a directory, a missing or read-only
    directory."""
    import os

    from .errors import ConfigError

    if not path:
        raise ConfigError("--metrics: a file name is needed")
    if os.path.isdir(path):
        raise ConfigError(f"--metrics {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"--metrics {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--metrics {path}: cannot write in {parent}")
