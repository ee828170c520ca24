"""QEMU 7.2's generic machine properties (``machine_class_init`` in ``hw/core/machine.c``)
and QEMU's QemuOpts splitting, in both spellings.

``-kernel``, ``-initrd``, ``-append`` and ``-bios`` are, in QEMU 7.2, the machine properties
``kernel``, ``initrd``, ``append`` and ``firmware`` (``softmmu/vl.c`` puts them into the
machine's option dict): ``-M microvm,kernel=FILE`` is ``-kernel FILE`` and the later of the
two wins. ``mem-merge``/``dump-guest-core`` are advice on guest RAM (``MADV_MERGEABLE``,
``MADV_DONTDUMP``), checked in the VMM's own mappings (``/proc/self/smaps``). ``pcie=on``,
``ioapic2=on``, ``usb=on`` are what QEMU's microvm ignores with ``acpi=off``.

The lines run through the real ``main()`` with ``run_spec`` replaced by a recorder (the spec
is built and validated for real); refusals the machine finds run the real ``run_spec``, which
refuses before any KVM object exists.
"""
from __future__ import annotations

import os
import re

import pytest

from microvm.memory import GuestMemory
from microvm.spec import MachineSpec

from cli_spec import one_spec, run_main, specs  # noqa: F401 (specs is a fixture)

MiB = 1 << 20


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """Files the spec accepts as paths (the recorder never loads them)."""
    out = {}
    for name in ("vmlinux", "other", "initrd", "initrd2", "bios.bin"):
        (tmp_path / name).write_bytes(b"\x7fELF not really")
        out[name] = str(tmp_path / name)
    return out


# ---- kernel=, initrd=, append=, firmware= are -kernel, -initrd, -append, -bios ----------------
@pytest.mark.parametrize("run_spelling", [False, True])
def test_machine_boot_properties_are_the_boot_options(files: dict, specs: list, capsys, run_spelling: bool) -> None:
    text = f"microvm,kernel={files['vmlinux']},initrd={files['initrd']},append=console=ttyS0,,115200 quiet,pit=off"
    argv = ["run", "--machine", text, "--nodefaults"] if run_spelling else ["-M", text, "-nodefaults"]
    spec = one_spec(argv, specs, capsys)
    assert (spec.kernel, spec.initrd, spec.append) == (files["vmlinux"], files["initrd"], "console=ttyS0,115200 quiet")
    assert spec.machine[-1] == "microvm,pit=off"   # the rest of the -M text, for the machine's parse


@pytest.mark.parametrize("argv, kernel, initrd, append", [
    # QEMU 7.2: one machine property each; the later on the line wins, whichever spelling
    (["-kernel", "{vmlinux}", "-M", "microvm,kernel={other}"], "other", None, ""),
    (["-M", "microvm,kernel={other}", "-kernel", "{vmlinux}"], "vmlinux", None, ""),
    (["-kernel", "{vmlinux}", "-initrd", "{initrd}", "-M", "initrd={initrd2}"], "vmlinux", "initrd2", ""),
    (["-M", "microvm,append=a", "-kernel", "{vmlinux}", "-append", "b"], "vmlinux", None, "b"),
    (["-kernel", "{vmlinux}", "-append", "b", "-M", "microvm", "-M", "append=a,,c"], "vmlinux", None, "a,c"),
])
def test_the_later_spelling_wins(argv: list, kernel: str, initrd: str | None, append: str, files: dict, specs: list,
                                 capsys) -> None:
    spec = one_spec([a.format(**{k.split(".")[0]: v for k, v in files.items()}) for a in argv] + ["-nodefaults"],
                    specs, capsys)
    assert spec.kernel == files[kernel]
    assert spec.initrd == (files[initrd] if initrd else None)
    assert spec.append == append


def test_firmware_is_bios(files: dict, specs: list, capsys) -> None:
    spec = one_spec(["-M", f"microvm,firmware={files['bios.bin']}", "-kernel", files["vmlinux"], "-nodefaults"],
                    specs, capsys)
    assert spec.bios == files["bios.bin"]
    specs.clear()
    spec = one_spec(["-M", "microvm,firmware=a.bin", "-bios", files["bios.bin"], "-kernel", files["vmlinux"],
                     "-nodefaults"], specs, capsys)
    assert spec.bios == files["bios.bin"]


def test_a_program_s_spec_gets_the_same_meaning(files: dict) -> None:
    spec = MachineSpec(kernel=files["other"], machine=[f"microvm,kernel={files['vmlinux']},append=x", "pit=off"])
    spec.validate()
    assert (spec.kernel, spec.append, spec.machine) == (files["vmlinux"], "x", ["microvm", "pit=off"])


@pytest.mark.parametrize("argv, pattern", [
    (["-M", "microvm,memory-backend=mem0"], r"^microvm: Memory backend 'mem0' not found \(microvm has no -object"),
    (["-M", "microvm,memory-backend="], r"^microvm: Memory backend '' not found \(microvm has no -object"),
    (["-M", "microvm,dtb=board.dtb"], r"^microvm: machine option dtb=board.dtb: unsupported on microvm"),
])
def test_properties_microvm_cannot_honour(argv: list, pattern: str, files: dict, capsys) -> None:
    rv, out, err = run_main(["-kernel", files["vmlinux"], "-nodefaults", *argv], capsys)
    assert (rv, out) == (1, "")          # QEMU's status
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    rv, out, err = run_main(["run", "--kernel", files["vmlinux"], "--nodefaults", "--machine", argv[1]], capsys)
    assert rv == 2 and err.startswith("microvm: error: ") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("text", [
    "microvm,mem-merge=off,dump-guest-core=off",
    "microvm,mem-merge=on,dump-guest-core=on,dumpdtb=/tmp/x.dtb",
    "microvm,acpi=off,pcie=on,ioapic2=on,usb=on",         # QEMU's microvm ignores them without ACPI
])
def test_accepted_machine_properties(text: str) -> None:
    from microvm.plugins import plugin_host

    opts = plugin_host().options
    parsed = opts.parse_machine([text])
    assert opts.legacy_devices(parsed) == opts.legacy_devices(opts.parse_machine(["microvm"]))
    assert parsed["mem-merge"] is ("mem-merge=off" not in text)
    assert parsed["dump-guest-core"] is ("dump-guest-core=off" not in text)


def test_no_acpi_is_acpi_off(files: dict, specs: list, capsys) -> None:
    """QEMU 7.2's -no-acpi sets the machine's acpi=off: pcie=on is then ignored, as there."""
    from microvm.plugins import plugin_host

    spec = one_spec(["-no-acpi", "-M", "microvm,pcie=on", "-kernel", files["vmlinux"], "-nodefaults"], specs, capsys)
    assert plugin_host().options.parse_machine(spec.machine)["pcie"] == "on"


def test_machine_help_lists_the_generic_properties(capsys) -> None:
    rv, out, _ = run_main(["-M", "microvm,help"], capsys)
    assert rv == 0
    names = {ln.split("=")[0].strip() for ln in out.splitlines()[1:] if ln.startswith("  ") and "=<" in ln}
    assert {"kernel", "initrd", "append", "firmware", "dtb", "dumpdtb", "mem-merge", "dump-guest-core",
            "memory-backend", "graphics", "usb"} <= names, out
    assert any(ln.startswith("  mem-merge=<bool>") and "MADV_MERGEABLE" in ln and "(default: true)" in ln
               for ln in out.splitlines()), out


# ---- mem-merge / dump-guest-core: advice on the guest RAM mappings ---------------------------
def vm_flags(mm) -> set[str]:
    """The kernel's VmFlags of the mapping ``mm`` starts (``/proc/self/smaps``)."""
    import ctypes

    start = f"{ctypes.addressof(ctypes.c_char.from_buffer(mm)):x}-"
    lines = open("/proc/self/smaps").read().splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(start))
    flags = next(ln for ln in lines[i + 1:] if ln.startswith("VmFlags:"))
    return set(flags.split()[1:])


KSM = os.path.isdir("/sys/kernel/mm/ksm")


@pytest.mark.parametrize("merge, dump", [(True, True), (False, False), (True, False)])
def test_guest_ram_dump_advice(merge: bool, dump: bool) -> None:
    mem = GuestMemory(8 * MiB, merge=merge, dump=dump)
    try:
        for region in mem:
            flags = vm_flags(region.mm)
            assert ("dd" in flags) == (not dump), flags
    finally:
        mem.close()


@pytest.mark.parametrize("merge, dump", [(True, True), (False, False), (True, False)])
def test_guest_ram_merge_advice(merge: bool, dump: bool) -> None:
    if not KSM:
        pytest.skip("the host kernel has no KSM (/sys/kernel/mm/ksm): MADV_MERGEABLE is refused, no 'mg' flag")
    mem = GuestMemory(8 * MiB, merge=merge, dump=dump)
    try:
        for region in mem:
            assert ("mg" in vm_flags(region.mm)) == merge
    finally:
        mem.close()


def test_a_kernel_refusing_the_advice_still_gives_guest_ram(monkeypatch, capsys) -> None:
    """The advice values made invalid (EINVAL from the real madvise, as from a kernel
    without KSM or MADV_DONTDUMP): guest RAM is built all the same; a failed MADV_DONTDUMP
    gets QEMU's warning (qemu_ram_setup_dump), once; a failed MADV_MERGEABLE nothing, as
    in QEMU."""
    import mmap

    monkeypatch.setattr(mmap, "MADV_MERGEABLE", 0x7FFF, raising=False)
    monkeypatch.setattr(mmap, "MADV_DONTDUMP", 0x7FFE, raising=False)
    for dump, warned in ((True, False), (False, True)):
        mem = GuestMemory(8 * MiB, merge=True, dump=dump)
        try:
            mem.write(0x1000, b"ok")
            assert mem.read(0x1000, 2) == b"ok"
            assert "dd" not in vm_flags(mem.regions[0].mm)
        finally:
            mem.close()
        err = capsys.readouterr().err
        want = "microvm: warning: madvise doesn't support MADV_DONTDUMP, but dump_guest_core=off specified\n"
        assert err == (want if warned else ""), err


@pytest.mark.parametrize("props, want, unwanted", [
    ("", {"mg"} if KSM else set(), {"dd"}),                               # QEMU's defaults: both on
    (",mem-merge=off,dump-guest-core=off", {"dd"}, {"mg"}),
])
def test_the_running_vmm_advises_its_guest_ram(tmp_path, props: str, want: set, unwanted: set) -> None:
    """A real VMM on /dev/kvm (a tiny guest that prints SPIN and spins): its 64 MiB of guest
    RAM carries the advice the -M line asked for."""
    import subprocess
    import time

    from kvm_helpers import build_guest, kvm_reason, microvm_cmd, read_until

    if kvm_reason() is not None:
        pytest.skip(f"needs KVM: {kvm_reason()}")
    guest = build_guest("spin", tmp_path)
    proc = subprocess.Popen(microvm_cmd("-M", f"microvm{props}", "-kernel", str(guest), "-m", "64", "-nodefaults",
                                        "-serial", "stdio", "-display", "none"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = bytearray()
        assert read_until(proc, out, lambda b: b"SPIN" in b, time.monotonic() + 60), (out, proc.poll())
        lines = open(f"/proc/{proc.pid}/smaps").read().splitlines()
        ram = []
        for i, ln in enumerate(lines):
            head = ln.split()[0] if ln else ""
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                if end - start == 64 * MiB:
                    ram.append(set(next(x for x in lines[i + 1:] if x.startswith("VmFlags:")).split()[1:]))
        assert len(ram) == 1, ram
        assert want <= ram[0] and not unwanted & ram[0], ram[0]
    finally:
        proc.kill()
        proc.wait()


# ---- a -M text microvm rewrites (boot keys, accel=) still means what the user wrote -----------
@pytest.mark.parametrize("extra", ["kernel={vmlinux}", "accel=kvm", "kernel_irqchip=on", "append=a,,b"])
@pytest.mark.parametrize("run_spelling", [False, True])
def test_a_later_type_in_a_rewritten_machine_text(extra: str, run_spelling: bool, files: dict, specs: list,
                                                  capsys) -> None:
    """QEMU runs ``-M microvm,kernel=FILE,type=microvm``: only the first item may be bare, and
    the text left after kernel=/accel= are taken out must not turn the later ``type=`` bare."""
    text = f"microvm,{extra.format(**files)},type=microvm"
    argv = (["run", "--kernel", files["vmlinux"], "--nodefaults", "--machine", text] if run_spelling
            else ["-kernel", files["vmlinux"], "-nodefaults", "-M", text])
    from microvm.errors import ConfigError
    from microvm.plugins import plugin_host

    opts = plugin_host().options
    opts.parse_machine(one_spec(argv, specs, capsys).machine)   # before: "Expected '=' after parameter 'microvm'"
    specs.clear()
    machine = one_spec(argv[:-1] + [text.replace("type=microvm", "type=pc")], specs, capsys).machine
    with pytest.raises(ConfigError, match="unsupported machine type 'pc'"):
        opts.parse_machine(machine)


def test_the_merged_machine_values_are_checked(files: dict, specs: list, capsys) -> None:
    """QEMU 7.2 merges -M, -no-acpi and the rest into one dict and sets the properties from
    it: -M acpi=on followed by -no-acpi is acpi=off there, and runs."""
    from microvm.errors import ConfigError
    from microvm.plugins import plugin_host

    opts = plugin_host().options
    spec = one_spec(["-M", "microvm,acpi=on,pcie=on", "-no-acpi", "-kernel", files["vmlinux"], "-nodefaults"],
                    specs, capsys)
    assert opts.parse_machine(spec.machine)["acpi"] == "off"
    assert opts.parse_machine(["microvm,smm=on", "smm=off"])["smm"] == "off"
    specs.clear()
    spec = one_spec(["-no-acpi", "-M", "microvm,acpi=on", "-kernel", files["vmlinux"], "-nodefaults"], specs, capsys)
    with pytest.raises(ConfigError, match=r"^machine option acpi=on: unsupported on microvm"):
        opts.parse_machine(spec.machine)
    with pytest.raises(ConfigError, match=r"expected on, off or auto"):  # malformed: refused even if replaced
        opts.parse_machine(["microvm,acpi=maybe", "acpi=off"])
