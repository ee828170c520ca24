"""The plugin contract, enforced: what plugins may import, what they receive, what the core
checks for them (unknown properties, ``help``), and the irqchip protocol both irqchips
implement in full."""
from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest

import microvm.api as api
from microvm.config import DeviceConfig, Property, parse_properties
from microvm.errors import ConfigError, PluginError
from microvm.irq import IrqChip
from microvm.plugins import PluginHost
from microvm.testing import TestMachine

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "plugins"
#: what the tests of a plugin may use besides microvm.api: the public testing facades
TEST_FACADES = {"microvm.api", "microvm.testing", "microvm.virtio.testing"}


def plugin_files() -> list[tuple[Path, str, bool]]:
    """(file, the plugin's own top-level package, is a test) for every Python file under plugins/."""
    out = []
    for pyproject in sorted(PLUGINS.glob("*/pyproject.toml")):
        root = pyproject.parent
        packages = [p.name for p in root.iterdir() if (p / "__init__.py").exists()]
        assert len(packages) == 1, f"{root}: one import package per plugin, found {packages}"
        for f in sorted(root.rglob("*.py")):
            out.append((f, packages[0], "tests" in f.relative_to(root).parts))
    return out


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module an ``import``/``from ... import`` names (relative imports as ``.``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((".", node.lineno))
            elif node.module == "microvm":  # from microvm import x: the submodule x, or a name
                found.extend((f"microvm.{a.name}", node.lineno) for a in node.names)
            else:
                found.append((node.module or "", node.lineno))
    return found


def private_context_access(path: Path) -> list[int]:
    """Lines where plugin code reaches behind the context (``ctx._m``, ``ctx._anything``)."""
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and isinstance(n.value, ast.Name)
            and n.value.id in ("ctx", "vcpu")]


def dynamic_core_imports(path: Path) -> list[int]:
    """Lines importing a core module by name at run time (importlib / __import__)."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__") and n.args[0].value.startswith("microvm.") \
                    and n.args[0].value not in ("microvm.api",):
                out.append(n.lineno)
    return out


def allowed(module: str, own: str, is_test: bool) -> bool:
    top = module.split(".")[0]
    if module == "." or top == own:
        return True
    if top == "microvm":
        return module in (TEST_FACADES if is_test else {"microvm.api"})
    if top.startswith("microvm_"):
        return False  # another plugin's package: plugins know each other only through the core
    return True  # the standard library, pluggy, test tools (pytest, hypothesis, the tests' helpers)


def test_there_are_plugins_to_check() -> None:
    files = plugin_files()
    assert len({own for _, own, _ in files}) >= 10 and any(t for _, _, t in files)


@pytest.mark.parametrize("path, own, is_test", plugin_files(), ids=lambda v: str(v.relative_to(PLUGINS)) if isinstance(v, Path) else "")
def test_plugins_import_only_the_public_api(path: Path, own: str, is_test: bool) -> None:
    bad = [f"line {line}: {mod}" for mod, line in imports_of(path) if not allowed(mod, own, is_test)]
    where = "a plugin's tests may use microvm.api, microvm.testing and microvm.virtio.testing" if is_test \
        else "plugin code imports microvm.api only"
    assert not bad, f"{path.relative_to(REPO)}: {where}; found {bad}"
    if not is_test:
        assert not private_context_access(path), f"{path.relative_to(REPO)}: ctx._... at lines {private_context_access(path)}"
        assert not dynamic_core_imports(path), f"{path.relative_to(REPO)}: importlib of a core module at {dynamic_core_imports(path)}"


def test_the_checker_catches_core_imports(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from microvm.kvm import ffi\nfrom microvm import layout\nimport microvm.api\nfrom . import device\n"
                 "import importlib\nm = importlib.import_module('microvm.machine')\nx = ctx._m.vm\n")
    bad = [m for m, _ in imports_of(f) if not allowed(m, "microvm_x", False)]
    assert bad == ["microvm.kvm", "microvm.layout"]
    assert dynamic_core_imports(f) == [6] and private_context_access(f) == [7]


def test_every_api_name_resolves() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert api.VIRTIO_ID_RNG == 4 and api.VIRTIO_F_VERSION_1 == 32
    assert api.KVM_EXIT_IOAPIC_EOI > 0 and api.KVM_CAP_SPLIT_IRQCHIP > 0
    with pytest.raises(AttributeError, match="microvm.api has no 'Machine'"):
        api.Machine


def test_importing_the_api_loads_nothing_of_the_core() -> None:
    import subprocess

    code = ("import sys, microvm.api; from microvm.api import hookimpl, Property; "
            "print(sorted(m for m in sys.modules if m.startswith('microvm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["microvm", "microvm.api", "microvm.config", "microvm.errors"]


def test_plugins_pin_a_compatible_core() -> None:
    import tomllib

    from microvm import __version__

    major, minor = (int(x) for x in __version__.split(".")[:2])
    want = f"microvm-core>={major}.{minor},<{major}.{minor + 1}"
    for pyproject in sorted(PLUGINS.glob("*/pyproject.toml")):
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        assert want in deps, f"{pyproject.relative_to(REPO)}: dependencies {deps} should pin {want!r}"


# ---- the context ------------------------------------------------------------------------------
def test_hooks_receive_the_context_not_the_machine() -> None:
    seen = []

    class Spy:
        __name__ = "spy"

        @api.hookimpl
        def create_devices(self, ctx):
            seen.append(ctx)

    with TestMachine(plugins=[Spy()]) as m:
        m.create_devices()
    [ctx] = seen
    assert isinstance(ctx, api.MachineContext) and ctx is m.ctx
    assert not hasattr(ctx, "__dict__"), "the context carries no attributes a plugin could set"
    with pytest.raises(AttributeError):
        ctx.extint_source = object()  # type: ignore[attr-defined]


def test_context_members_are_documented() -> None:
    doc = (REPO / "docs/plugins.md").read_text()
    members = [n for n, v in vars(api.MachineContext).items() if not n.startswith("_")]
    assert len(members) >= 20
    missing = [n for n in members if f"`{n}" not in doc]
    assert not missing, f"docs/plugins.md does not describe MachineContext members {missing}"


def test_legacy_devices_are_resolved_once_from_the_options() -> None:
    cases = {
        "microvm": (True, True, False, True),                     # QEMU 7.2 microvm under KVM
        "microvm,pic=off,pit=on,rtc=on,isa-serial=off": (False, True, True, False),
        "microvm,rtc=auto,pic=auto": (True, True, False, True),
    }
    for text, want in cases.items():
        with TestMachine(text) as m:
            assert tuple(m.ctx.legacy) == want, text


def test_an_option_no_plugin_declares_means_the_device_is_absent() -> None:
    host = PluginHost(use_entry_points=False)  # the core alone
    with TestMachine("microvm", host=host) as m:
        assert tuple(m.ctx.legacy) == (False, False, False, False)
        assert m.ctx.switch("auto-kernel-cmdline") is True and m.ctx.switch("pic") is False


# ---- typed configuration ----------------------------------------------------------------------
def test_unknown_device_property_is_one_line_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info, TestMachine(devices=["isa-debug-exit,bogus=1"]) as m:
        m.create_devices()
    assert str(info.value) == "isa-debug-exit: unknown property bogus (valid: id, iobase, iosize)"


def test_unknown_virtio_device_property_lists_the_transport_ones(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    with pytest.raises(ConfigError) as info:
        TestMachine(devices=["virtio-blk-device,drive=d,bogus=1,x=2"], drives=[f"id=d,file={img}"]).create_devices()
    assert str(info.value) == "virtio-blk-device: unknown properties bogus, x (valid: drive, force-legacy, id, serial)"


def test_device_help_prints_the_declared_properties() -> None:
    with pytest.raises(ConfigError) as info:
        TestMachine(devices=["virtio-blk-device,help"])
    text = str(info.value)
    assert text.startswith("virtio-blk-device properties: ")
    assert "drive=<str> (required)" in text and "force-legacy=<bool> (default on)" in text
    with pytest.raises(ConfigError, match="device types: .*isa-debug-exit.*virtio-blk-device"):
        TestMachine(devices=["help"])


def test_values_are_converted_once_by_their_declaration() -> None:
    decl = (Property("n", "int", 1), Property("on", "bool", False), Property("size", "size", 0),
            Property("mode", "choice", "a", choices=("a", "b")), Property("name", "str", required=True))
    p = parse_properties("dev", decl, {"n": "0x10", "on": "yes", "size": "4K", "mode": "b", "name": "x"})
    assert (p.n, p.on, p.size, p.mode, p.name) == (16, True, 4096, "b", "x")
    assert p.given == {"n", "on", "size", "mode", "name"}
    q = parse_properties("dev", decl, {"name": "y"})
    assert (q.n, q.on, q.mode) == (1, False, "a") and q.given == {"name"}
    for given, msg in [({"name": "x", "on": "maybe"}, "dev: on=maybe: expected on or off"),
                       ({"name": "x", "n": "ten"}, "dev: n=ten: expected a number"),
                       ({"name": "x", "mode": "c"}, "dev: mode=c: expected one of a, b"),
                       ({}, "dev: name=... is required")]:
        with pytest.raises(ConfigError) as info:
            parse_properties("dev", decl, given)
        assert str(info.value) == msg


def test_device_help_spellings() -> None:
    assert DeviceConfig.parse("help").help and DeviceConfig.parse("help").driver == ""
    assert DeviceConfig.parse("virtio-blk-device,help").driver == "virtio-blk-device"
    assert not DeviceConfig.parse("virtio-blk-device,drive=help").help


def test_every_backend_is_checked_even_when_unused() -> None:
    with pytest.raises(ConfigError, match=r"chardev c0 \(file\): path=\.\.\. is required"):
        TestMachine(chardevs=["file,id=c0"])
    with pytest.raises(ConfigError, match=r"chardev c1 \(null\): unknown property colour \(valid: mux\)"):
        TestMachine(chardevs=["null,id=c1,colour=red"])
    with pytest.raises(ConfigError, match="--chardev sock,id=c2: no plugin provides this character device backend"):
        TestMachine(chardevs=["sock,id=c2"])


def test_registration_refuses_malformed_declarations() -> None:
    from types import SimpleNamespace

    def plugin(**props):
        return SimpleNamespace(__name__="bad", register_device_types=api.hookimpl(
            lambda register: register("x-dev", lambda ctx, p: None, "", **props)))

    with pytest.raises(PluginError, match="expected Property declarations"):
        PluginHost(extra=[plugin(properties=["drive"])], use_entry_points=False)
    with pytest.raises(PluginError, match="declares property 'id' twice or reserved"):
        PluginHost(extra=[plugin(properties=[Property("id", "str")])], use_entry_points=False)
    backend = SimpleNamespace(__name__="be", register_backends=api.hookimpl(
        lambda register: register("drive", "qcow2", lambda *a: None)))
    with pytest.raises(PluginError, match="backend kind 'drive' is not one of chardev, netdev"):
        PluginHost(extra=[backend], use_entry_points=False)


# ---- the irqchip protocol ---------------------------------------------------------------------
PROTOCOL_MEMBERS = sorted(n for n in IrqChip.__dict__ if not n.startswith("_")) + sorted(IrqChip.__annotations__)


def irqchip_classes() -> list[type]:
    from microvm_ioapic.chip import SplitIrqChip
    from microvm_irqchip_kvm.chip import KernelIrqChip
    from microvm.testing import FakeIrqChip

    return [SplitIrqChip, KernelIrqChip, FakeIrqChip]


@pytest.mark.parametrize("cls", irqchip_classes(), ids=lambda c: c.__name__)
def test_irqchips_implement_the_whole_protocol(cls: type) -> None:
    for name in set(PROTOCOL_MEMBERS):
        spec = IrqChip.__dict__.get(name)
        if callable(spec):
            impl = getattr(cls, name, None)
            assert callable(impl), f"{cls.__name__} lacks {name}()"
            want = list(inspect.signature(spec).parameters)
            assert list(inspect.signature(impl).parameters) == want, f"{cls.__name__}.{name} signature"
        else:  # a data member: set in __init__ or on the class
            src = inspect.getsource(cls)
            assert re.search(rf"self\.{name}\b.*=|^    {name}\b", src, re.M), f"{cls.__name__} lacks attribute {name}"


def test_the_core_never_probes_the_irqchip() -> None:
    core = REPO / "core"
    for f in [core / "machine.py", core / "vcpu.py", core / "context.py"]:
        text = f.read_text()
        assert "hasattr(self.irqchip" not in text and 'getattr(self.irqchip' not in text, f


def test_in_kernel_irqchip_refuses_a_userspace_pic() -> None:
    from microvm_irqchip_kvm.chip import KernelIrqChip

    chip = KernelIrqChip.__new__(KernelIrqChip)
    with pytest.raises(ConfigError, match="has its own 8259s"):
        chip.attach_pic(object())
    assert chip.extint_source() is None and chip.has_pic()


@pytest.mark.parametrize("decl, why", [
    (Property("n", "integer"), "kind 'integer' is not one of"),
    (Property("c", "choice", "x"), "a choice needs choices"),
    (Property("c", "choice", "z", choices=("x", "y")), "default 'z' is not one of its choices"),
    (Property("r", "str", None, "help", (), True), "help and auto_means are strings"),  # required=True by position
    (Property("o", "OnOffAuto", True), "an OnOffAuto default is on, off or auto"),
])
def test_malformed_declarations_are_refused_at_registration(decl, why) -> None:
    from types import SimpleNamespace

    p = SimpleNamespace(__name__="bad", register_device_types=api.hookimpl(
        lambda register: register("x-dev", lambda ctx, props: None, "", properties=[decl])))
    with pytest.raises(PluginError, match=why):
        PluginHost(extra=[p], use_entry_points=False)
