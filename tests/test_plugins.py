"""microvm.plugins and microvm.hookspecs: one test per hook with a small in-test plugin, the
registries' duplicate checks, the plugin index cache and the allow/deny lists."""
from __future__ import annotations

import marshal
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import pluggy
import pytest

import microvm
from microvm import hookspecs
from microvm import plugins as plugins_mod
from microvm.errors import PluginError
from microvm.config import Property
from microvm.options import MachineOption
from microvm.plugins import EntryPointInfo, PluginHost


def make_plugin(name: str, **hooks: Any) -> types.SimpleNamespace:
    """A module-like plugin: ``hooks`` are plain functions, marked as microvm hookimpls."""
    return types.SimpleNamespace(__name__=name, **{k: microvm.hookimpl(v) for k, v in hooks.items()})


def host_with(*plugins: Any) -> PluginHost:
    return PluginHost(extra=list(plugins), use_entry_points=False)


# ---- the hook specifications -----------------------------------------------------------------
HOOKS: dict[str, tuple[str, ...]] = {
    "register_machine_options": ("register",),
    "register_irqchips": ("register",),
    "register_device_types": ("register",),
    "register_backends": ("register",),
    "create_devices": ("ctx",),
    "cpuid": ("ctx", "vcpu_id", "entries"),
    "configure_vcpu": ("ctx", "vcpu"),
    "kernel_cmdline": ("ctx",),
    "mptable_entries": ("ctx",),
    "handle_exit": ("ctx", "vcpu", "exit_reason"),
    "machine_start": ("ctx",),
    "machine_stop": ("ctx",),
}


def spec_names() -> set[str]:
    pm = pluggy.PluginManager("microvm")
    return {n for n in dir(hookspecs) if pm.parse_hookspec_opts(hookspecs, n) is not None}


def test_every_hookspec_is_covered_here() -> None:
    assert spec_names() == set(HOOKS)


@pytest.mark.parametrize("name", list(HOOKS))
def test_hookspec_signature(name: str) -> None:
    spec = getattr(host_with().pm.hook, name).spec
    assert spec is not None
    assert spec.argnames == HOOKS[name]
    assert spec.opts["firstresult"] is (name == "handle_exit")
    assert spec.opts["historic"] is False
    assert ".. versionadded::" in (spec.function.__doc__ or "")


def test_hookimpl_marker_is_the_microvm_project() -> None:
    assert microvm.hookimpl.project_name == "microvm"
    assert hookspecs.hookspec.project_name == "microvm"


# ---- register_machine_options ------------------------------------------------------------------
def test_register_machine_options() -> None:
    opt = MachineOption("x-test-widget", "OnOffAuto", "auto", "a test widget")
    host = host_with(make_plugin("widget", register_machine_options=lambda register: register(opt)))
    got = host.options.options["x-test-widget"]
    assert (got.kind, got.default, got.help) == ("OnOffAuto", "auto", "a test widget")
    assert got.plugin == "widget"                     # attributed to the plugin that declared it
    assert host.options.parse_machine(["microvm,x-test-widget=off"])["x-test-widget"] == "off"
    assert "auto-kernel-cmdline" in host.options.options   # the core's own options stay


def test_register_machine_options_keeps_an_explicit_plugin_name() -> None:
    opt = MachineOption("x-named", "bool", False, "", plugin="declared-name")
    host = host_with(make_plugin("widget", register_machine_options=lambda register: register(opt)))
    assert host.options.options["x-named"].plugin == "declared-name"


def test_duplicate_machine_option_is_refused() -> None:
    opt = MachineOption("x-dup", "bool", False, "")
    a = make_plugin("plug_a", register_machine_options=lambda register: register(opt))
    b = make_plugin("plug_b", register_machine_options=lambda register: register(opt))
    with pytest.raises(PluginError, match=r"machine option 'x-dup' declared twice \((plug_a and plug_b|plug_b and plug_a)\)"):
        host_with(a, b)


def test_a_plugin_cannot_redeclare_a_core_option() -> None:
    clash = make_plugin("clash", register_machine_options=lambda register: register(MachineOption("auto-kernel-cmdline", "bool", False, "")))
    with pytest.raises(PluginError, match="'auto-kernel-cmdline' declared twice") as info:
        host_with(clash)
    assert "core" in str(info.value) and "clash" in str(info.value)


def test_register_machine_options_needs_a_machine_option() -> None:
    bad = make_plugin("bad", register_machine_options=lambda register: register("x-str"))
    with pytest.raises(PluginError, match="expected a MachineOption"):
        host_with(bad)


# ---- register_irqchips / register_device_types ------------------------------------------------
def factory(*args: Any) -> str:
    return "made"


@pytest.mark.parametrize("hook, table, what", [
    ("register_irqchips", "irqchips", "kernel-irqchip"),
    ("register_device_types", "device_types", "device type"),
])
def test_named_registries(hook: str, table: str, what: str) -> None:
    host = host_with(make_plugin("chips", **{hook: lambda register: (register("x-one", factory, "first"),
                                                                      register("x-two", None))}))
    reg = getattr(host, table)
    assert reg["x-one"].factory is factory and reg["x-one"].help == "first" and reg["x-one"].plugin == "chips"
    assert reg["x-two"].factory is None and reg["x-two"].help == ""
    assert reg["x-one"].factory(None) == "made"


@pytest.mark.parametrize("hook, what", [("register_irqchips", "kernel-irqchip"), ("register_device_types", "device type")])
def test_named_registries_refuse_duplicates(hook: str, what: str) -> None:
    a = make_plugin("plug_a", **{hook: lambda register: register("x-same", factory, "")})
    b = make_plugin("plug_b", **{hook: lambda register: register("x-same", factory, "")})
    with pytest.raises(PluginError, match=f"{what} 'x-same' registered twice"):
        host_with(a, b)
    same_plugin_twice = make_plugin("twice", **{hook: lambda register: (register("x-z", factory), register("x-z", factory))})
    with pytest.raises(PluginError, match=r"registered twice \(twice and twice\)"):
        host_with(same_plugin_twice)


@pytest.mark.parametrize("hook", ["register_irqchips", "register_device_types"])
@pytest.mark.parametrize("bad_name", ["", None, 5])
def test_named_registries_refuse_bad_names(hook: str, bad_name: Any) -> None:
    p = make_plugin("oddly", **{hook: lambda register: register(bad_name, factory, "")})
    with pytest.raises(PluginError, match="plugin oddly: .*name must be a non-empty string"):
        host_with(p)


# ---- register_backends -------------------------------------------------------------------------
def test_register_backends() -> None:
    def backends(register):
        register("chardev", "x-pty", factory, "a pseudo-terminal")
        register("netdev", "x-pty", None)        # same name, another kind: allowed
        register("netdev", "x-vde", factory, properties=[Property("sock", "str", required=True)])

    host = host_with(make_plugin("be", register_backends=backends))
    assert set(host.backends) >= {("chardev", "x-pty"), ("netdev", "x-pty"), ("netdev", "x-vde")}
    assert host.backends[("netdev", "x-vde")].properties[0].name == "sock"
    r = host.backends[("chardev", "x-pty")]
    assert (r.name, r.factory, r.help, r.plugin) == ("x-pty", factory, "a pseudo-terminal", "be")
    assert host.backends[("netdev", "x-pty")].factory is None


def test_register_backends_refuses_duplicates() -> None:
    a = make_plugin("plug_a", register_backends=lambda register: register("chardev", "x-sock", factory))
    b = make_plugin("plug_b", register_backends=lambda register: register("chardev", "x-sock", factory))
    with pytest.raises(PluginError, match="chardev backend 'x-sock' registered twice"):
        host_with(a, b)


# ---- machine-time hooks reach the plugin ----------------------------------------------------------
class FakeContext:
    """What the core plugin's own hookimpls read from a machine context."""

    def __init__(self) -> None:
        self.virtio_devices: list[Any] = []

    def option(self, name: str) -> Any:
        return {"auto-kernel-cmdline": True}.get(name)


class Recorder:
    """A class-based plugin implementing every machine-time hook, recording the calls."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @microvm.hookimpl
    def create_devices(self, ctx):
        self.calls.append(("create_devices", {"ctx": ctx}))

    @microvm.hookimpl
    def cpuid(self, ctx, vcpu_id, entries):
        self.calls.append(("cpuid", {"ctx": ctx, "vcpu_id": vcpu_id, "entries": entries}))
        for e in entries:
            if e["function"] == 0x40000001:
                e["eax"] |= 1 << 3

    @microvm.hookimpl
    def configure_vcpu(self, ctx, vcpu):
        self.calls.append(("configure_vcpu", {"ctx": ctx, "vcpu": vcpu}))

    @microvm.hookimpl
    def kernel_cmdline(self, ctx):
        self.calls.append(("kernel_cmdline", {"ctx": ctx}))
        return ["recorder.enable=1"]

    @microvm.hookimpl
    def mptable_entries(self, ctx):
        from microvm.boot.mptable import IoInterrupt

        self.calls.append(("mptable_entries", {"ctx": ctx}))
        return [IoInterrupt(src_irq=9, dst_ioapic=0, dst_pin=9)]

    @microvm.hookimpl
    def handle_exit(self, ctx, vcpu, exit_reason):
        self.calls.append(("handle_exit", {"ctx": ctx, "vcpu": vcpu, "exit_reason": exit_reason}))
        return True if exit_reason == 22 else None

    @microvm.hookimpl
    def machine_start(self, ctx):
        self.calls.append(("machine_start", {"ctx": ctx}))

    @microvm.hookimpl
    def machine_stop(self, ctx):
        self.calls.append(("machine_stop", {"ctx": ctx}))


MACHINE_HOOKS = ["create_devices", "cpuid", "configure_vcpu", "kernel_cmdline", "mptable_entries",
                 "handle_exit", "machine_start", "machine_stop"]


def test_recorder_implements_every_machine_time_hook() -> None:
    assert set(MACHINE_HOOKS) == {n for n in HOOKS if not n.startswith("register_")}
    host = host_with(Recorder())
    assert sorted(h.name for h in host.pm.get_hookcallers(host.pm.get_plugin("recorder"))) == sorted(MACHINE_HOOKS)


@pytest.mark.parametrize("name", MACHINE_HOOKS)
def test_machine_time_hook_reaches_the_plugin(name: str) -> None:
    rec = Recorder()
    host = host_with(rec)
    ctx, vcpu = FakeContext(), object()
    kwargs: dict[str, Any] = {"ctx": ctx}
    if name == "cpuid":
        kwargs.update(vcpu_id=3, entries=[{"function": 0x40000001, "index": 0, "eax": 0}])
    if name in ("configure_vcpu", "handle_exit"):
        kwargs["vcpu"] = vcpu
    if name == "handle_exit":
        kwargs["exit_reason"] = 22
    result = getattr(host.hook, name)(**kwargs)
    assert rec.calls == [(name, kwargs)]
    for arg in HOOKS[name]:
        assert rec.calls[0][1][arg] is kwargs[arg]
    if name == "cpuid":
        assert kwargs["entries"][0]["eax"] == 1 << 3          # edited in place
    elif name == "kernel_cmdline":
        assert sorted(result) == [[], ["recorder.enable=1"]]  # the core's and the plugin's
    elif name == "mptable_entries":
        from microvm.boot.mptable import IoInterrupt

        assert [IoInterrupt(src_irq=9, dst_ioapic=0, dst_pin=9)] in result
    elif name == "handle_exit":
        assert result is True                                  # firstresult: one value, not a list
    else:
        assert result == []


def test_handle_exit_first_true_wins() -> None:
    first, second = Recorder(), Recorder()
    second.__name__ = "recorder2"
    host = host_with(first, second)
    assert host.hook.handle_exit(ctx=FakeContext(), vcpu=None, exit_reason=22) is True
    assert len(first.calls) + len(second.calls) == 1           # the second was not asked
    first.calls.clear(), second.calls.clear()
    assert host.hook.handle_exit(ctx=FakeContext(), vcpu=None, exit_reason=99) is None
    assert len(first.calls) == len(second.calls) == 1           # nobody handled it: both asked


def test_hook_tracing(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MICROVM_TRACE_HOOKS", "1")
    host = host_with(Recorder())
    host.hook.machine_start(ctx=FakeContext())
    err = capsys.readouterr().err
    assert "[hook]" in err and "machine_start" in err


def test_describe_lists_hooks_per_plugin() -> None:
    rows = {r["name"]: r for r in host_with(Recorder()).describe()}
    assert rows["recorder"] == {"name": "recorder", "dist": "-", "version": "-", "hooks": sorted(MACHINE_HOOKS)}
    assert rows["core"]["hooks"] == ["kernel_cmdline", "mptable_entries", "register_backends", "register_machine_options"]


@pytest.mark.parametrize("hooks", [
    {"create_device": lambda ctx: None},                      # a typo: no such hook
    {"create_devices": lambda ctx, extra: None},              # an argument the spec does not have
])
def test_a_broken_plugin_is_a_plugin_error(hooks: dict) -> None:
    with pytest.raises(PluginError, match="broken"):
        host_with(make_plugin("broken", **hooks))


# ---- plugin index cache ---------------------------------------------------------------------------
FAKE_EPS = [EntryPointInfo("fake_a", "fake_microvm_plugin_a", "fake-a", "1.2.3"),
            EntryPointInfo("fake_b", "fake_microvm_plugin_b:PLUGIN", "fake-b", "0.9")]


@pytest.fixture
def scan_count(monkeypatch) -> list[int]:
    count = [0]

    def scan() -> list[EntryPointInfo]:
        count[0] += 1
        return list(FAKE_EPS)

    monkeypatch.setattr(plugins_mod, "_scan_entry_points", scan)
    return count


def refuse_scan() -> list[EntryPointInfo]:
    raise AssertionError("the index should have come from the cache")


def test_discover_writes_an_index(plugin_cache, scan_count) -> None:
    assert plugins_mod.discover() == FAKE_EPS
    assert scan_count == [1]
    (index,) = plugin_cache.glob("plugin-index-*.marshal")
    data = marshal.loads(index.read_bytes())
    assert data["version"] == plugins_mod.INDEX_VERSION
    assert data["fingerprint"] == plugins_mod._fingerprint()
    assert [EntryPointInfo(*e) for e in data["entry_points"]] == FAKE_EPS
    assert not list(plugin_cache.glob("*.tmp"))


def test_discover_reads_the_index(plugin_cache, scan_count, monkeypatch) -> None:
    first = plugins_mod.discover()
    monkeypatch.setattr(plugins_mod, "_scan_entry_points", refuse_scan)
    assert plugins_mod.discover() == first == FAKE_EPS


def test_sys_path_change_invalidates_the_index(plugin_cache, scan_count, tmp_path, monkeypatch) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    # after sys.path[0] (the script's directory, which the fingerprint leaves out on purpose)
    monkeypatch.setattr(sys, "path", [sys.path[0], str(site), *sys.path[1:]])
    plugins_mod.discover()
    plugins_mod.discover()
    assert scan_count == [1]
    (before,) = plugin_cache.glob("plugin-index-*.marshal")
    st = os.stat(site)
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # "a distribution was installed"
    plugins_mod.discover()
    assert scan_count == [2]
    (after,) = plugin_cache.glob("plugin-index-*.marshal")  # the stale index is replaced
    assert after.name != before.name
    monkeypatch.setattr(plugins_mod, "_scan_entry_points", refuse_scan)
    assert plugins_mod.discover() == FAKE_EPS


def test_a_new_sys_path_entry_invalidates_the_index(plugin_cache, scan_count, tmp_path, monkeypatch) -> None:
    plugins_mod.discover()
    extra = tmp_path / "more"
    extra.mkdir()
    monkeypatch.setattr(sys, "path", [sys.path[0], str(extra), *sys.path[1:]])
    plugins_mod.discover()
    assert scan_count == [2]


def test_the_script_directory_does_not_invalidate_the_index(plugin_cache, scan_count, tmp_path, monkeypatch) -> None:
    """`microvm` (sys.path[0] = the venv's bin/) and `python -m` (the current directory) share one index."""
    plugins_mod.discover()
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path[1:]])
    plugins_mod.discover()
    assert scan_count == [1]


def test_a_corrupt_index_is_rebuilt(plugin_cache, scan_count) -> None:
    plugins_mod.discover()
    (index,) = plugin_cache.glob("plugin-index-*.marshal")
    index.write_bytes(b"{not marshal")
    assert plugins_mod.discover() == FAKE_EPS
    assert scan_count == [2]
    assert marshal.loads(index.read_bytes())["version"] == plugins_mod.INDEX_VERSION


def test_indexes_of_removed_environments_are_pruned(plugin_cache, scan_count, tmp_path) -> None:
    """A removed virtualenv's index goes when an index is next written; a living one's stays,
    and so does a recent index that does not name its environment (an older format)."""
    gone_env, live_env = tmp_path / "gone-venv", tmp_path / "live-venv"
    live_env.mkdir()
    plugin_cache.mkdir(parents=True)

    def index(name: str, **data: object) -> Path:
        f = plugin_cache / f"plugin-index-{name}.marshal"
        f.write_bytes(marshal.dumps({"version": plugins_mod.INDEX_VERSION, "fingerprint": "x", "entry_points": [], **data}))
        return f

    gone = index("00000001-00000000", prefix=str(gone_env))
    live = index("00000002-00000000", prefix=str(live_env))
    unnamed_new = index("00000003-00000000")
    unnamed_old = index("00000004-00000000")
    month = plugins_mod.STALE_UNNAMED_S
    os.utime(unnamed_old, (time.time() - month - 60, time.time() - month - 60))
    garbage = plugin_cache / "plugin-index-00000005-00000000.marshal"
    garbage.write_bytes(b"{not marshal")
    os.utime(garbage, (time.time() - month - 60, time.time() - month - 60))
    in_flight = plugin_cache / "plugin-index-00000006-00000000.marshal.4242.tmp"
    in_flight.write_bytes(b"")

    plugins_mod.discover()
    assert scan_count == [1]
    left = {f.name for f in plugin_cache.iterdir()}
    assert not gone.exists() and not unnamed_old.exists() and not garbage.exists()
    assert {live.name, unnamed_new.name, in_flight.name} <= left
    (mine,) = left - {live.name, unnamed_new.name, in_flight.name}
    assert marshal.loads((plugin_cache / mine).read_bytes())["prefix"] == sys.prefix


def test_no_plugin_cache_switch(plugin_cache, scan_count, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_NO_PLUGIN_CACHE", "1")
    plugins_mod.discover()
    plugins_mod.discover()
    assert scan_count == [2]
    assert not plugin_cache.exists()


def test_unwritable_cache_is_not_an_error(tmp_path, scan_count, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MICROVM_CACHE", str(blocker / "cache"))
    monkeypatch.delenv("MICROVM_NO_PLUGIN_CACHE", raising=False)
    assert plugins_mod.discover() == FAKE_EPS


def test_real_scan_finds_the_installed_plugins() -> None:
    found = {e.name: e for e in plugins_mod._scan_entry_points()}
    assert {"serial_16550", "lapic", "kvmclock", "irqchip_kvm"} <= set(found)
    assert found["serial_16550"].dist == "microvm-serial-16550"
    assert found["serial_16550"].value == "microvm_serial_16550.plugin"


# ---- allow and deny lists -------------------------------------------------------------------------
@pytest.fixture
def fake_entry_points(monkeypatch) -> None:
    """Two importable fake plugins behind fake entry points (one via ``module:attr``)."""
    mod_a = types.ModuleType("fake_microvm_plugin_a")
    mod_a.register_device_types = microvm.hookimpl(lambda register: register("x-dev-a", factory, ""))
    mod_b = types.ModuleType("fake_microvm_plugin_b")
    mod_b.PLUGIN = make_plugin("ignored", register_device_types=lambda register: register("x-dev-b", factory, ""))
    monkeypatch.setitem(sys.modules, "fake_microvm_plugin_a", mod_a)
    monkeypatch.setitem(sys.modules, "fake_microvm_plugin_b", mod_b)
    monkeypatch.setattr(plugins_mod, "discover", lambda: list(FAKE_EPS))
    for var in ("MICROVM_PLUGINS_ALLOW", "MICROVM_PLUGINS_DENY", "MICROVM_TRACE_HOOKS"):
        monkeypatch.delenv(var, raising=False)


def loaded(host: PluginHost) -> set[str]:
    return {name for name, _ in host.pm.list_name_plugin()}


def test_entry_point_plugins_are_loaded(fake_entry_points) -> None:
    host = PluginHost()
    assert loaded(host) == {"core", "fake_a", "fake_b"}
    assert set(host.device_types) == {"x-dev-a", "x-dev-b"}
    assert host.device_types["x-dev-b"].plugin == "fake_b"     # named after the entry point
    rows = {r["name"]: r for r in host.describe()}
    assert (rows["fake_a"]["dist"], rows["fake_a"]["version"]) == ("fake-a", "1.2.3")
    assert rows["fake_b"]["hooks"] == ["register_device_types"]


def test_deny_list_excludes_a_plugin(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_PLUGINS_DENY", "fake_a")
    host = PluginHost()
    assert loaded(host) == {"core", "fake_b"}
    assert set(host.device_types) == {"x-dev-b"}
    assert set(host.entry_points) == {"fake_b"}


def test_allow_list_keeps_only_the_named(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_PLUGINS_ALLOW", " fake_a , nonexistent")
    host = PluginHost()
    assert loaded(host) == {"core", "fake_a"}
    assert set(host.device_types) == {"x-dev-a"}


def test_deny_wins_over_allow(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_PLUGINS_ALLOW", "fake_a,fake_b")
    monkeypatch.setenv("MICROVM_PLUGINS_DENY", "fake_b")
    assert loaded(PluginHost()) == {"core", "fake_a"}


def test_empty_allow_list_loads_no_plugin_but_the_core(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_PLUGINS_ALLOW", "")
    host = PluginHost()
    assert loaded(host) == {"core"}
    assert "auto-kernel-cmdline" in host.options.options


def test_plugin_that_fails_to_import(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setattr(plugins_mod, "discover",
                        lambda: [EntryPointInfo("ghost", "no_such_module_for_microvm_tests", "ghost-dist", "6.6")])
    with pytest.raises(PluginError, match=r"plugin ghost \(ghost-dist 6\.6\) failed to load: No module named"):
        PluginHost()


def test_plugin_host_is_created_once(monkeypatch) -> None:
    made: list[int] = []

    class Counting:
        def __init__(self) -> None:
            made.append(1)

    monkeypatch.setattr(plugins_mod, "_HOST", None)
    monkeypatch.setattr(plugins_mod, "PluginHost", Counting)
    a = plugins_mod.plugin_host()
    assert plugins_mod.plugin_host() is a and made == [1]


def test_importing_microvm_loads_no_plugin() -> None:
    import subprocess

    code = "import sys, microvm; print(sorted(m for m in sys.modules if m.startswith(('microvm_', 'pluggy', 'microvm.plugins'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
