"""microvm.cli: the fast parser agrees with typer, bad input is one line and status 2, and
the listing commands show the installed plugins. No KVM: every failing command line here
stops before a VM would be created."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import typing
from importlib.metadata import entry_points
from pathlib import Path

import pluggy
import pytest
import typer.main

import microvm.cli.commands as commands
from microvm.cli import app as cliapp
from microvm.cli import fast
from microvm.cli import main as climain

MICROVM = Path(sys.executable).with_name("microvm")
RUN_SIGNATURE = inspect.signature(commands.run_command)


# ---- (1) the two parsers agree -------------------------------------------------------------
def typer_run_params() -> list:
    group = typer.main.get_command(cliapp.app)
    return list(group.commands["run"].params)


def test_run_is_a_typer_subcommand() -> None:
    group = typer.main.get_command(cliapp.app)
    assert {"run", "plugins", "machine", "guest"} <= set(group.commands)


def test_same_option_spellings() -> None:
    typer_spellings = {o for p in typer_run_params() for o in [*p.opts, *p.secondary_opts]}
    assert typer_spellings == set(fast.RUN_OPTIONS)


def test_same_meaning_of_each_option() -> None:
    hints = typing.get_type_hints(cliapp.run)
    for p in typer_run_params():
        for spelling in p.opts:
            key, kind = fast.RUN_OPTIONS[spelling]
            assert key == p.name, spelling
            if p.count:
                want = "count"
            elif p.is_flag:
                want = "flag"
            elif p.multiple:
                want = "list"
            elif hints[p.name] is int:
                want = "int"
            else:
                want = "str"
            assert kind == want, f"{spelling}: fast says {kind}, typer says {want}"


def test_same_defaults() -> None:
    typer_defaults = {p.name: p.default for p in typer_run_params()}
    assert typer_defaults == fast.DEFAULTS
    assert set(fast.DEFAULTS) == set(RUN_SIGNATURE.parameters)


@pytest.fixture
def captured(monkeypatch) -> list[dict]:
    """Replace run_command: record its arguments by name, return 0."""
    calls: list[dict] = []

    def fake_run_command(*args, **kwargs) -> int:
        calls.append(dict(RUN_SIGNATURE.bind(*args, **kwargs).arguments))
        return 0

    monkeypatch.setattr(commands, "run_command", fake_run_command)
    return calls


FAST_SAMPLES = [
    ["run"],
    ["run", "--kernel", "/boot/vmlinux"],
    ["run", "--kernel=/boot/bzImage", "--initrd", "/boot/initrd.img", "--append", "console=ttyS0 quiet"],
    ["run", "-m", "1G", "--smp", "2", "--no-reboot"],
    ["run", "--memory=256M", "--smp=4", "-v", "--verbose"],
    ["run", "-M", "microvm,isa-serial=off", "--machine", "x-option-roms=off", "-M", "pit=on"],
    ["run", "--device", "virtio-blk-device,drive=d0", "--drive", "id=d0,file=/tmp/d.img,format=raw,if=none",
     "--device=virtio-net-device,netdev=n0", "--netdev", "tap,id=n0,ifname=tap0"],
    ["run", "--chardev", "stdio,id=c0", "--serial", "chardev:c0", "--serial=null"],
    ["run", "--append", "-x init=/bin/sh", "--kernel", "k"],          # a value that looks like an option
    ["run", "--append=root=/dev/vda rw", "--append", "last wins"],
    ["run", "--append="],
    ["run", "--smp", "+3", "-m", "-1"],
    ["run", "--smp", "007"],
    ["run", "--kernel", "a", "--kernel", "b"],
    ["run", "--bios", "qboot.rom", "--kernel", "k"],
]
TYPER_ONLY_SAMPLES = [
    ["run", "-vv", "--kernel", "k"],            # combined short flags: typer's job
    ["run", "--smp", "4", "--", ],
]


def both_paths(argv: list[str], calls: list[dict]) -> tuple[tuple[int, list[dict]], tuple[int, list[dict]]]:
    calls.clear()
    rv_main = climain.main(list(argv))
    via_main = list(calls)
    calls.clear()
    rv_typer = cliapp.typer_main(list(argv))
    via_typer = list(calls)
    return (rv_main, via_main), (rv_typer, via_typer)


@pytest.mark.parametrize("argv", FAST_SAMPLES, ids=" ".join)
def test_fast_path_and_typer_agree(argv: list[str], captured: list[dict]) -> None:
    fast.parse_run(argv)  # really the fast path (raises NotFast otherwise)
    (rv1, a), (rv2, b) = both_paths(argv, captured)
    assert rv1 == rv2 == 0
    assert len(a) == len(b) == 1
    assert a == b


def test_fast_path_and_typer_agree_on_unicode_digits(captured: list[dict], capsys) -> None:
    (rv1, a), (rv2, b) = both_paths(["run", "--smp", "\u0663"], captured)
    assert (rv1, a) == (rv2, b)


def test_fast_path_result_in_detail(captured: list[dict]) -> None:
    climain.main(["run", "--kernel", "k", "-m", "2G", "--smp", "3", "-M", "a=1", "-M", "b=2", "-v", "-v", "--no-reboot"])
    assert captured == [{
        **fast.DEFAULTS,
        "kernel": "k", "initrd": None, "append": None, "memory": "2G", "smp": "3", "no_reboot": True,
        "machine": ["a=1", "b=2"], "device": [], "drive": [], "chardev": [], "netdev": [], "serial": [],
        "qmp": [], "mon": [], "prelaunch": False, "no_shutdown": False, "name": None,
        "metrics": None, "log_items": [], "verbose": 2,
    }]


@pytest.mark.parametrize("argv", TYPER_ONLY_SAMPLES, ids=" ".join)
def test_typer_only_lines_still_reach_run_command(argv: list[str], captured: list[dict]) -> None:
    with pytest.raises(fast.NotFast):
        fast.parse_run(argv)
    (rv1, a), (rv2, b) = both_paths(argv, captured)
    assert rv1 == rv2 == 0 and a == b and len(a) == 1


def test_run_command_status_is_the_exit_status(monkeypatch) -> None:
    monkeypatch.setattr(commands, "run_command", lambda *a, **k: 7)
    assert climain.main(["run"]) == 7
    assert cliapp.typer_main(["run", "-vv"]) == 7


# ---- (2) bad input: one line, status 2 ----------------------------------------------------
@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROVM_")}
    env["MICROVM_CACHE"] = str(tmp_path / "cache")
    return env


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not a kernel\n" * 20)
    return {"text": text, "missing": tmp_path / "no-such-kernel"}


def microvm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(MICROVM), *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


BAD_LINES = {
    "unknown option": (["run", "--bogus"], r"No such option: --bogus"),
    "unknown -M key": (["run", "--kernel", "{text}", "-M", "microvm,bogus=on"],
                       r"unknown machine option 'bogus'; known: .*isa-serial"),
    "--smp 300": (["run", "--kernel", "{text}", "--smp", "300"],
                  r"-smp 300: Invalid SMP CPUs 300. The max CPUs supported by machine 'microvm' is 255"),
    "--smp not multiplying out": (["run", "--kernel", "{text}", "--smp", "3,sockets=2"],
                                  r"-smp 3,sockets=2: Invalid CPU topology: product of the hierarchy must match"),
    "-m 12q": (["run", "--kernel", "{text}", "-m", "12q"], r"-m 12q: Parameter 'size' expects a non-negative number"),
    "-m abc": (["run", "--kernel", "{text}", "-m", "abc"], r"-m abc: Parameter 'size' expects a non-negative number"),
    "-m 128MB": (["run", "--kernel", "{text}", "-m", "128MB"], r"-m 128MB: Parameter 'size'"),  # QEMU refuses it too
    "--smp abc": (["run", "--smp", "abc"], r"-smp abc: Parameter 'smp.cpus' expects integer"),
    "missing kernel": (["run", "--kernel", "{missing}"], r"kernel {missing}: no such file"),
    "not a kernel": (["run", "--kernel", "{text}"], r"not a kernel image"),
    "-M other machine": (["run", "--kernel", "{text}", "-M", "pc"], r"unsupported machine type 'pc'"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_input_is_one_line_and_status_2(case: str, files, cli_env) -> None:
    args, pattern = BAD_LINES[case]
    args = [a.format(**files) for a in args]
    r = microvm(args, cli_env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("microvm: error: ")
    assert re.search(pattern.format(**files), lines[0]), lines[0]
    assert r.stdout == ""


@pytest.mark.parametrize("which, pattern", [("missing", "no such file"), ("text", "not a kernel image")])
def test_kernel_errors_need_no_kvm(which: str, pattern: str, files, plugin_cache, monkeypatch, capsys) -> None:
    import microvm.kvm
    import microvm.plugins

    def no_kvm(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/dev/kvm")

    monkeypatch.setattr(microvm.kvm, "Kvm", no_kvm)
    monkeypatch.setattr(microvm.plugins, "_HOST", None)
    rv = climain.main(["run", "--kernel", str(files[which]), "--serial", "none"])
    err = capsys.readouterr().err
    assert rv == 2 and err.startswith("microvm: error: ") and pattern in err, err


# ---- (3) listing commands ------------------------------------------------------------------
def installed_plugins() -> dict[str, tuple[str, str, list[str]]]:
    """name -> (distribution, version, hooks) straight from the package metadata."""
    pm = pluggy.PluginManager("microvm")
    out = {}
    for ep in entry_points(group="microvm"):
        obj = ep.load()
        hooks = sorted(n for n in dir(obj) if pm.parse_hookimpl_opts(obj, n) is not None)
        out[ep.name] = (ep.dist.metadata["Name"], ep.dist.version, hooks)
    return out


def test_plugins_command_lists_every_plugin(cli_env) -> None:
    r = microvm(["plugins"], cli_env)
    assert r.returncode == 0 and r.stderr == ""
    rows = {}
    for line in r.stdout.splitlines():
        name, dist, *hooks = re.split(r"\s{2,}", line.strip())
        rows[name] = (dist, hooks[0].split(", ") if hooks else [])
    expected = installed_plugins()
    assert {"serial_16550", "lapic", "kvmclock", "irqchip_kvm"} <= set(expected)
    assert set(rows) == set(expected) | {"core"}
    for name, (dist, version, hooks) in expected.items():
        assert rows[name] == (f"{dist} {version}", hooks), name
    assert rows["core"] == ("- -", ["kernel_cmdline", "mptable_entries", "register_backends", "register_machine_options"])
    assert rows["serial_16550"][1] == [
        "create_devices", "machine_start", "machine_stop", "mptable_entries", "register_machine_options",
    ]


def test_machine_command_lists_the_options(cli_env, plugin_cache) -> None:
    from microvm.plugins import PluginHost

    r = microvm(["machine"], cli_env)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == "microvm machine options (-M microvm,KEY=VALUE,...):"
    host = PluginHost()
    for name, opt in host.options.options.items():
        (line,) = [ln for ln in lines if ln.startswith(f"  {name}=")]
        assert line.endswith(f"[{opt.plugin}]")
        assert lines[lines.index(line) + 1] == f"      {opt.help}"
    i = lines.index("  isa-serial=bool (default on) [serial_16550]")
    assert lines[i + 1] == "      Set off to disable the instantiation an ISA serial port"
    assert any(ln.startswith("  auto-kernel-cmdline=bool (default on) [core]") for ln in lines)
    assert any(ln.startswith("  kernel-irqchip=str (default auto; auto means ") for ln in lines)
    (chips,) = [ln for ln in lines if ln.startswith("kernel-irqchip values: ")]
    assert "on (PIC, IOAPIC and PIT emulated inside KVM)" in chips


def test_python_dash_m_microvm_is_the_same_command() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "microvm", "run", "--smp", "300", "--kernel", "k"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == "microvm: error: -smp 300: Invalid SMP CPUs 300. The max CPUs supported by machine 'microvm' is 255\n"


# ---- start-up: the default path imports nothing heavy -----------------------------------------
#: what the brief's start-up rule keeps off the default ``microvm run`` path. ``re`` and
#: ``enum`` are not here: :mod:`typing` imports them (every module says ``from typing import
#: Any``), so they are there before microvm's first line runs.
HEAVY = ("inspect", "json", "logging", "dataclasses", "typer", "click", "asyncio", "pathlib", "ast", "dis")


@pytest.mark.parametrize("argv", [
    ["run", "--kernel", "/nonexistent/vmlinux", "-m", "64", "-M", "microvm,pit=off,kernel=/nonexistent/k"],
    ["-M", "microvm,rtc=off", "-kernel", "/nonexistent/vmlinux", "-m", "64", "-nographic", "-no-acpi"],
])
def test_the_default_run_path_up_to_the_spec_imports_nothing_heavy(argv: list[str]) -> None:
    """Both spellings, parsed and turned into a MachineSpec (the VM is not built: run_spec is
    replaced by a probe that reports sys.modules at that moment)."""
    code = (
        "import sys, microvm.machine as m\n"
        "def probe(spec, ready=None):\n"
        "    print(','.join(x for x in %r if x in sys.modules)); print('SPEC', spec.kernel); return 0\n"
        "m.run_spec = probe\n"
        "from microvm.cli.main import main\n"
        "sys.exit(main(%r))\n" % (HEAVY, argv))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    heavy, spec = r.stdout.splitlines()[:2]
    assert spec.startswith("SPEC /nonexistent/"), r.stdout
    assert heavy == "", f"imported on the default path: {heavy}"
