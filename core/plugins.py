"""Plugin discovery and the registries filled by the ``register_*`` hooks.

Plugins are the ``microvm`` entry points of the installed distributions. Scanning every
installed distribution's metadata costs tens of milliseconds, more than the rest of a start,
so the result is cached in ``~/.cache/microvm/plugin-index-*.json``, keyed by the mtimes of
the ``sys.path`` directories (installing or removing a distribution touches its
``site-packages``). ``MICROVM_NO_PLUGIN_CACHE=1`` skips the cache.

Operators steer plugins with ``MICROVM_PLUGINS_ALLOW`` / ``MICROVM_PLUGINS_DENY`` (comma
separated entry-point names) and trace hook calls with ``MICROVM_TRACE_HOOKS=1``.
"""
from __future__ import annotations

import importlib
import marshal
import os
import sys
import time
import zlib
from typing import Any, Callable, Iterable, NamedTuple

import pluggy

from .config import MachineOption, Property
from .errors import PluginError
from .options import OptionRegistry
from .log import get_logger

log = get_logger("microvm.plugins")
GROUP = "microvm"
INDEX_VERSION = 2
#: an index that does not say which environment wrote it is deleted at this age (seconds)
STALE_UNNAMED_S = 30 * 86400
#: what register_backends may register
BACKEND_KINDS = ("chardev", "netdev")
#: keys the core handles for every device or backend (QEMU's -device/-chardev/-netdev id=)
RESERVED_PROPERTIES = ("id",)


class EntryPointInfo(NamedTuple):
    name: str
    value: str
    dist: str
    version: str


class Registered(NamedTuple):
    """A named thing a plugin registered (device type, backend, irqchip), with the
    properties it declared (device types and backends) and, for device types, whether the
    core places it on a virtio-mmio transport."""

    name: str
    factory: Callable[..., Any] | None
    help: str
    plugin: str
    properties: tuple[Property, ...] = ()
    virtio: bool = False


def _cache_dir() -> str:
    return os.environ.get("MICROVM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "microvm")


def _fingerprint() -> str:
    """The interpreter, and every sys.path directory with its mtime (installing or removing a
    distribution changes its directory's mtime)."""
    parts = [sys.prefix, sys.version]
    # sys.path[0] is the script's directory (or the current one): never where distributions
    # live, and different for `microvm` and `python -m ...`, which would then keep
    # invalidating each other's index
    for p in sys.path[1:]:
        if p in ("", "."):
            continue
        try:
            parts.append(f"{p}\0{os.stat(p).st_mtime_ns}")
        except OSError:
            continue
    return "\n".join(parts)


def _scan_entry_points() -> list[EntryPointInfo]:
    from importlib.metadata import entry_points

    found = []
    seen = set()
    for ep in entry_points(group=GROUP):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        found.append(
            EntryPointInfo(ep.name, ep.value, dist.metadata["Name"] if dist else "?", dist.version if dist else "?")
        )
    return found


def _prune(cache: str, prefix: str, keep: str) -> None:
    """Delete the indexes no run will read again: this environment's older ones (one index per
    environment) and those of environments that no longer exist (a removed virtualenv or
    worktree would otherwise leave its index behind for ever). An index that does not name
    its environment (written before indexes did, or unreadable) goes once it is a month old.
    Runs only after an index was written, never on the cached start-up path."""
    for name in os.listdir(cache):
        if not (name.startswith("plugin-index-") and name.endswith(".marshal")) or name == keep:
            continue  # another process's temporary file is its own business
        full = os.path.join(cache, name)
        if not name.startswith(f"plugin-index-{prefix}-"):
            try:
                with open(full, "rb") as f:
                    env = marshal.load(f).get("prefix")
                old = os.stat(full).st_mtime < time.time() - STALE_UNNAMED_S
            except (OSError, ValueError, EOFError, TypeError, AttributeError):
                env, old = None, True
            if isinstance(env, str) and os.path.isdir(env):
                continue
            if not isinstance(env, str) and not old:
                continue
        try:
            os.unlink(full)
        except OSError:
            pass


def discover() -> list[EntryPointInfo]:
    """The installed plugins' entry points, from the cache when sys.path is unchanged.

    The index is a ``marshal`` file (no ``json``/``hashlib`` import on the start-up path),
    named by CRCs of the environment and of the fingerprint, and holding the full
    fingerprint, which must match exactly.
    """
    if os.environ.get("MICROVM_NO_PLUGIN_CACHE"):
        return _scan_entry_points()
    fp = _fingerprint()
    prefix = f"{zlib.crc32(sys.prefix.encode()):08x}"
    path = os.path.join(_cache_dir(), f"plugin-index-{prefix}-{zlib.crc32(fp.encode()):08x}.marshal")
    try:
        with open(path, "rb") as f:
            data = marshal.load(f)
        if data["version"] == INDEX_VERSION and data["fingerprint"] == fp:
            return [EntryPointInfo(*e) for e in data["entry_points"]]
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        pass
    eps = _scan_entry_points()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump({"version": INDEX_VERSION, "prefix": sys.prefix, "fingerprint": fp, "entry_points": [tuple(e) for e in eps]}, f)
        os.replace(tmp, path)
        _prune(os.path.dirname(path), prefix, os.path.basename(path))
    except OSError as e:  # a read-only home is no reason to fail
        log.debug("plugin index not cached: %s", e)
    return eps


def _load(ep: EntryPointInfo) -> Any:
    module, _, attr = ep.value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def _env_list(name: str) -> set[str] | None:
    v = os.environ.get(name)
    if v is None:
        return None
    return {x.strip() for x in v.split(",") if x.strip()}


class PluginHost:
    """The plugin manager plus everything the registration hooks declared."""

    def __init__(self, extra: Iterable[Any] = (), use_entry_points: bool = True) -> None:
        from . import hookspecs

        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        from . import coreplugin

        self.pm.register(coreplugin, name="core")
        self.entry_points: dict[str, EntryPointInfo] = {}
        if use_entry_points:
            allow, deny = _env_list("MICROVM_PLUGINS_ALLOW"), _env_list("MICROVM_PLUGINS_DENY") or set()
            for ep in discover():
                if (allow is not None and ep.name not in allow) or ep.name in deny:
                    log.debug("plugin %s skipped by allow/deny list", ep.name)
                    continue
                try:
                    plugin = _load(ep)
                except Exception as e:
                    raise PluginError(f"plugin {ep.name} ({ep.dist} {ep.version}) failed to load: {e}") from e
                self._register(plugin, ep.name, f"{ep.dist} {ep.version}")
                self.entry_points[ep.name] = ep
        for i, plugin in enumerate(extra):
            self._register(plugin, getattr(plugin, "__name__", None) or f"extra-{i}", "")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise PluginError(f"plugin {e.plugin!r}: {e}") from e
        if os.environ.get("MICROVM_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda s: sys.stderr.write("[hook] " + s))
            self.pm.enable_tracing()
        self.hook = self.pm.hook
        self.options = OptionRegistry()
        self.irqchips: dict[str, Registered] = {}
        self.device_types: dict[str, Registered] = {}
        self.backends: dict[tuple[str, str], Registered] = {}
        self._collect()

    def _register(self, plugin: Any, name: str, origin: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as e:
            where = f" ({origin})" if origin else ""
            raise PluginError(f"plugin {name}{where} does not match the hook specifications: {e}") from e

    # -- registration -------------------------------------------------------------------
    def _each_plugin(self, hookname: str) -> Iterable[tuple[str, Callable[..., Any]]]:
        """(plugin name, implementation) for one hook, so registrations can be attributed."""
        for impl in getattr(self.pm.hook, hookname).get_hookimpls():
            yield impl.plugin_name, impl.function

    def _collect(self) -> None:
        for pname, fn in self._each_plugin("register_machine_options"):

            def reg_option(option: MachineOption, _p: str = pname) -> None:
                if isinstance(option, Property) and not option.plugin:
                    option = option._replace(plugin=_p)
                self.options.register(option)

            fn(register=reg_option)
        for pname, fn in self._each_plugin("register_irqchips"):
            fn(register=self._registrar(self.irqchips, "kernel-irqchip", pname, with_properties=False))
        for pname, fn in self._each_plugin("register_device_types"):
            fn(register=self._registrar(self.device_types, "device type", pname, with_virtio=True))
        for pname, fn in self._each_plugin("register_backends"):

            def reg_backend(kind: str, name: str, factory: Callable[..., Any] | None, help: str = "",
                            properties: Iterable[Property] = (), _p: str = pname) -> None:
                if kind not in BACKEND_KINDS:
                    raise PluginError(f"plugin {_p}: backend kind {kind!r} is not one of {', '.join(BACKEND_KINDS)}")
                self._registrar(self.backends, f"{kind} backend", _p, kind)(name, factory, help, properties)

            fn(register=reg_backend)

    @staticmethod
    def _registrar(table: dict[Any, Registered], what: str, plugin: str, kind: str | None = None,
                   with_properties: bool = True, with_virtio: bool = False) -> Callable[..., None]:
        """A ``register`` callback that refuses empty and duplicate names and malformed
        property declarations; backends are keyed by (kind, name), everything else by name."""

        def register(name: str, factory: Callable[..., Any] | None, help: str = "",
                     properties: Iterable[Property] = (), virtio: bool = False) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin}: {what} name must be a non-empty string, got {name!r}")
            props = tuple(properties)
            if props and not with_properties:
                raise PluginError(f"plugin {plugin}: {what} {name!r} cannot declare properties")
            if virtio and not with_virtio:
                raise PluginError(f"plugin {plugin}: {what} {name!r} cannot be a virtio device")
            seen: set[str] = set()
            for p in props:
                if not isinstance(p, Property):
                    raise PluginError(f"plugin {plugin}: {what} {name!r}: expected Property declarations, got {p!r}")
                why = p.problem()
                if why:
                    raise PluginError(f"plugin {plugin}: {what} {name!r}: {why}")
                if p.name in seen or p.name in RESERVED_PROPERTIES:
                    raise PluginError(f"plugin {plugin}: {what} {name!r} declares property {p.name!r} twice or reserved")
                seen.add(p.name)
            key = (kind, name) if kind is not None else name
            if key in table:
                raise PluginError(f"{what} {name!r} registered twice ({table[key].plugin} and {plugin})")
            table[key] = Registered(name, factory, help, plugin, tuple(p._replace(plugin=p.plugin or plugin) for p in props), bool(virtio))

        return register

    # -- introspection (``microvm plugins``) ----------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            ep = self.entry_points.get(name)
            rows.append(
                {"name": name, "dist": ep.dist if ep else "-", "version": ep.version if ep else "-", "hooks": hooks}
            )
        return sorted(rows, key=lambda r: r["name"])


_HOST: PluginHost | None = None


def plugin_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use and once."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST
