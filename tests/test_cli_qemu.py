"""QEMU's spelling (issue 10): every option the seed uses and the common ones around it map
to the same run options and MachineSpec as ``microvm run``; everything else QEMU has is one
line in QEMU's form with QEMU's status (1); help is generated from the plugins' declarations.

Most lines run through the real ``main()`` in-process with ``run_spec`` replaced by a
recorder (the spec is built and validated for real; no VM starts); refusals that the machine
itself finds (an unknown device type) run the real ``run_spec``, which refuses before any
KVM object exists. A few lines run as real processes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from microvm.cli import qemu
from microvm.cli.options import BY_QEMU_NAME, RUN_OPTIONS
from microvm.spec import MachineSpec

from cli_spec import run_main, specs  # noqa: F401 (specs is a fixture)

MICROVM = Path(sys.executable).with_name("microvm")
MiB = 1 << 20


@pytest.fixture
def kernel(tmp_path) -> str:
    """A file the spec accepts as a kernel path (the recorder never loads it)."""
    k = tmp_path / "vmlinux"
    k.write_bytes(b"\x7fELF not really")
    return str(k)


# ---- (1) what each accepted option means -------------------------------------------------------
def topo(spec: MachineSpec) -> tuple[int, int, int, int, int]:
    return tuple(spec.topology)  # type: ignore[return-value]


def m(spec: MachineSpec) -> list[str]:
    """The -M values, without the graphics=off that -nographic (or no display option) adds."""
    return [x for x in spec.machine if x != "graphics=off"]


def machine_value(spec: MachineSpec, name: str):
    from microvm.plugins import plugin_host

    return plugin_host().options.parse_machine(spec.machine)[name]


ACCEPTED: dict[str, tuple[list[str], object]] = {
    "-M microvm": (["-M", "microvm"], lambda s: m(s) == ["microvm"]),
    "-machine type=microvm,accel=kvm": (["-machine", "type=microvm,accel=kvm"], lambda s: m(s) == ["type=microvm"]),
    "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off":
        (["-M", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off"],
         lambda s: m(s) == ["microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off"]),
    "-M accel=kvm:tcg (kvm first)": (["-M", "microvm,accel=kvm:tcg"], lambda s: m(s) == ["microvm"]),
    "kernel_irqchip (QEMU's old spelling)": (["-M", "microvm,kernel_irqchip=split"],
                                             lambda s: m(s) == ["microvm,kernel-irqchip=split"]),
    "-enable-kvm": (["-enable-kvm"], lambda s: m(s) == []),
    "-accel kvm": (["-accel", "kvm"], lambda s: m(s) == []),
    "-accel accel=kvm": (["-accel", "accel=kvm"], lambda s: m(s) == []),
    "-accel kvm,kernel-irqchip=on wins over -M": (["-M", "microvm,kernel-irqchip=split", "-accel", "kvm,kernel-irqchip=on"],
                                                 lambda s: m(s) == ["microvm,kernel-irqchip=split", "kernel-irqchip=on"]),
    "-accel kvm -accel tcg (a fallback never used)": (["-accel", "kvm", "-accel", "tcg"], lambda s: m(s) == []),
    "-cpu host": (["-cpu", "host"], lambda s: s.cpu == "host" and s.cpu_features == {}),
    "-cpu max": (["-cpu", "max"], lambda s: s.cpu_features == {}),
    "-cpu host,-arch-capabilities": (["-cpu", "host,-arch-capabilities"],
                                     lambda s: s.cpu_features == {"arch-capabilities": False}),
    "-cpu host,+x2apic,pcid=off,avx": (["-cpu", "host,+x2apic,pcid=off,avx"],
                                       lambda s: s.cpu_features == {"x2apic": True, "pcid": False, "avx": True}),
    "-m 512m": (["-m", "512m"], lambda s: s.mem_size == 512 * MiB),
    "-m 256 (MiB)": (["-m", "256"], lambda s: s.mem_size == 256 * MiB),
    "-m size=1G": (["-m", "size=1G"], lambda s: s.mem_size == 1024 * MiB),
    "-m 256,size=512 (last wins)": (["-m", "256,size=512"], lambda s: s.mem_size == 512 * MiB),
    "no -m: 128 MiB": ([], lambda s: s.mem_size == 128 * MiB),
    "-m 0: QEMU's default": (["-m", "0"], lambda s: s.mem_size == 128 * MiB),
    "-m 4097K: rounded up to 8 KiB as QEMU": (["-m", "4097K"], lambda s: s.mem_size == 4104 * 1024),
    "-smp 2": (["-smp", "2"], lambda s: s.smp == 2 and topo(s) == (2, 1, 2, 1, 2)),
    "-smp 4,sockets=2,cores=2": (["-smp", "4,sockets=2,cores=2"], lambda s: s.smp == 4 and topo(s) == (4, 2, 2, 1, 4)),
    "-smp cpus=2,maxcpus=4": (["-smp", "cpus=2,maxcpus=4"], lambda s: s.smp == 2 and topo(s) == (2, 1, 4, 1, 4)),
    "-smp 4,threads=2": (["-smp", "4,threads=2"], lambda s: topo(s) == (4, 1, 2, 2, 4)),
    "-initrd": (["-initrd", "/i.cpio"], lambda s: s.initrd == "/i.cpio"),
    "-append": (["-append", "earlyprintk=ttyS0 console=ttyS0 root=/dev/vda"],
                lambda s: s.append == "earlyprintk=ttyS0 console=ttyS0 root=/dev/vda"),
    "-append with a leading dash": (["-append", "-x init=/bin/sh"], lambda s: s.append == "-x init=/bin/sh"),
    "--append (two dashes, as QEMU)": (["--append", "quiet"], lambda s: s.append == "quiet"),
    "-no-reboot": (["-no-reboot"], lambda s: s.no_reboot),
    "-S (with a monitor to cont)": (["-S", "-qmp", "unix:/tmp/q.sock,server=on,wait=off"], lambda s: s.prelaunch),
    "-qmp unix:PATH,server,nowait (QEMU's short forms)": (["-qmp", "unix:/tmp/q.sock,server,nowait"],
                                                          lambda s: s.qmp == ["unix:/tmp/q.sock,server,nowait"]),
    "-no-shutdown": (["-no-shutdown"], lambda s: s.no_shutdown),
    "-qmp": (["-qmp", "unix:/tmp/q.sock,server=on,wait=off"], lambda s: s.qmp == ["unix:/tmp/q.sock,server=on,wait=off"]),
    "-chardev socket + -mon mode=control": (["-chardev", "socket,id=m0,path=/tmp/m0.sock,server=on,wait=off",
                                             "-mon", "chardev=m0,mode=control"],
                                            lambda s: s.mon == ["chardev=m0,mode=control"] and "m0" in s.monitor_chardevs),
    "-qmp takes the monitor off stdio": (["-nographic", "-qmp", "tcp:127.0.0.1:0,server=on,wait=off"],
                                         lambda s: s.serial == ["stdio"]),
    "-nographic: serial0 on a stdio mux": (["-nographic"], lambda s: s.serial == ["mon:stdio"]),
    "-nographic sets graphics=off (fw_cfg NOGRAPHIC 1)": (["-M", "microvm", "-nographic"],
                                                         lambda s: s.machine == ["graphics=off", "microvm"]),
    "no display option: as -nographic, graphics=off": (["-M", "microvm"], lambda s: s.machine == ["graphics=off", "microvm"]),
    "-display none leaves graphics on (NOGRAPHIC 0)": (["-M", "microvm", "-display", "none"],
                                                      lambda s: s.machine == ["microvm"]),
    "-M graphics=on wins over the implied graphics=off": (["-M", "microvm,graphics=on", "-nographic"],
                                                          lambda s: machine_value(s, "graphics") is True),
    "no display option: as -nographic": ([], lambda s: s.serial == ["mon:stdio"]),
    "-nodefaults: no serial port": (["-nodefaults"], lambda s: s.serial == ["none"]),
    "-nodefaults -nographic: no serial port": (["-nodefaults", "-nographic"], lambda s: s.serial == ["none"]),
    "-nodefaults -nographic -serial stdio (seed 1)": (["-nodefaults", "-nographic", "-serial", "stdio"],
                                                      lambda s: s.serial == ["stdio"]),
    "-nographic -monitor none: plain stdio": (["-nographic", "-monitor", "none"], lambda s: s.serial == ["stdio"]),
    "-display none: serial0 on a console nobody sees": (["-display", "none"], lambda s: s.serial == ["null"]),
    "-display none -serial stdio": (["-display", "none", "-serial", "stdio"], lambda s: s.serial == ["stdio"]),
    "-serial mon:stdio": (["-serial", "mon:stdio"], lambda s: s.serial_configs[0].chardev.props == {"mux": "on", "signal": "off"}),
    "-serial null -serial file:x": (["-serial", "null", "-serial", "file:/tmp/x"], lambda s: s.serial == ["null", "file:/tmp/x"]),
    "-chardev stdio,id=c0 -serial chardev:c0": (["-chardev", "stdio,id=c0", "-serial", "chardev:c0"],
                                                lambda s: list(s.chardev_configs) == ["c0"] and s.serial == ["chardev:c0"]),
    "seed 2's console chardev": (["-nodefaults", "-nographic", "-chardev", "stdio,id=virtiocon0"],
                                 lambda s: s.chardev_configs["virtiocon0"].backend == "stdio" and s.serial == ["none"]),
    "-drive and -device": (["-drive", "id=test,file=test.img,format=raw,if=none", "-device", "virtio-blk-device,drive=test"],
                           lambda s: s.drive_configs["test"].file == "test.img" and s.device_configs[0].driver == "virtio-blk-device"),
    "-netdev tap": (["-netdev", "tap,id=tap0,script=no,downscript=no"],
                    lambda s: s.netdev_configs["tap0"].props == {"script": "no", "downscript": "no"}),
    "-name": (["-name", "g1"], lambda s: s.name == "g1"),
    "-name guest=,debug-threads=": (["-name", "guest=g2,debug-threads=on"], lambda s: s.name == "g2"),
    "-no-user-config": (["-no-user-config"], lambda s: True),
    "-no-acpi, -no-hpet (microvm has neither)": (["-no-acpi", "-no-hpet"], lambda s: True),
    "-metrics (microvm's own)": (["-metrics", "m.json"], lambda s: s.metrics == os.path.abspath("m.json")),
    "-fw_cfg NAME,string=": (["-fw_cfg", "opt/org.example/x,string=a,,b"],
                             lambda s: s.fw_cfg_files == [("opt/org.example/x", b"a,b")]),
    "-fw_cfg name=NAME,string= (twice)": (["-fw_cfg", "name=opt/a,string=1", "-fw_cfg", "opt/b,string=2"],
                                          lambda s: s.fw_cfg_files == [("opt/a", b"1"), ("opt/b", b"2")]),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_option(case: str, kernel: str, specs: list, capsys) -> None:
    argv, check = ACCEPTED[case]
    rv, out, err = run_main(["-kernel", kernel, *argv], capsys)
    assert (rv, err) == (0, ""), err
    (spec,) = specs
    assert spec.kernel == kernel
    assert check(spec), spec


def test_prelaunch_without_a_monitor_warns(kernel: str, specs: list, capsys) -> None:
    """-S and no -qmp/-mon: QEMU would just wait for ever (its monitor may be on the console;
    microvm has no human monitor): one warning line, the VM still starts paused."""
    for argv in (["-kernel", kernel, "-S"], ["run", "--kernel", kernel, "-S"]):
        rv, out, err = run_main(argv, capsys)
        assert (rv, out) == (0, "")
        assert err == ("microvm: warning: -S without -qmp or -mon: nothing can continue the VM, "
                       "it stays paused until it is ended\n")
    assert [s.prelaunch for s in specs] == [True, True]
    rv, out, err = run_main(["-kernel", kernel, "-S", "-chardev", "socket,id=m,path=/tmp/m.sock,server=on,wait=off",
                             "-mon", "chardev=m,mode=control"], capsys)
    assert (rv, err) == (0, "")


def test_chardev_short_form_booleans_as_qemu_7_2(kernel: str, specs: list, capsys) -> None:
    """QEMU 7.2 takes -chardev socket,...,server,nowait (deprecated, with a warning per
    flag) as server=on,wait=off; so does -mon on it."""
    text = "socket,id=m,path=/tmp/m.sock,server,nowait"
    rv, out, err = run_main(["-kernel", kernel, "-chardev", text, "-mon", "chardev=m,mode=control"], capsys)
    assert rv == 0
    assert err.splitlines() == [
        f"microvm: warning: -chardev {text}: short-form boolean option 'server' deprecated; please use server=on instead",
        f"microvm: warning: -chardev {text}: short-form boolean option 'nowait' deprecated; please use wait=off instead",
    ]
    (spec,) = specs
    assert spec.chardev_configs["m"].props == {"path": "/tmp/m.sock", "server": "on", "wait": "off"}
    assert spec.monitor_chardevs == {"m": "unix:/tmp/m.sock,server=on,wait=off"}


def test_both_spellings_build_the_same_spec(kernel: str, specs: list, capsys) -> None:
    qemu_line = ["-M", "microvm,pit=off", "-enable-kvm", "-cpu", "host", "-m", "512m", "-smp", "2",
                 "-kernel", kernel, "-append", "console=ttyS0", "-nodefaults", "-no-user-config", "-nographic",
                 "-serial", "stdio", "-drive", "id=d,file=t.img,format=raw,if=none",
                 "-device", "virtio-blk-device,drive=d", "-no-reboot"]
    run_line = ["run", "-M", "microvm,pit=off", "--enable-kvm", "--cpu", "host", "-m", "512m", "--smp", "2",
                "--kernel", kernel, "--append", "console=ttyS0", "--nodefaults", "--no-user-config", "--nographic",
                "--serial", "stdio", "--drive", "id=d,file=t.img,format=raw,if=none",
                "--device", "virtio-blk-device,drive=d", "--no-reboot"]
    assert run_main(qemu_line, capsys)[0] == 0
    assert run_main(run_line, capsys)[0] == 0
    a, b = specs
    assert repr(a) == repr(b)


def test_fw_cfg_file_both_spellings_and_the_opt_warning(kernel: str, specs: list, capsys, tmp_path) -> None:
    """-fw_cfg name=NAME,file=PATH reads the file when the line is parsed (as QEMU does);
    --fw-cfg is the same row; a name outside opt/ gets QEMU's warning and is still added."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"\0\1binary\xff")
    for argv in (["-kernel", kernel, "-fw_cfg", f"name=opt/b,file={blob}", "-fw_cfg", "etc/mine,string=x"],
                 ["run", "--kernel", kernel, "--fw-cfg", f"name=opt/b,file={blob}", "--fw-cfg", "etc/mine,string=x"]):
        rv, out, err = run_main(argv, capsys)
        assert (rv, out) == (0, "")
        dash = "-fw_cfg" if argv[0] == "-kernel" else "--fw-cfg"
        assert err == (f'microvm: warning: {dash} etc/mine,string=x: externally provided fw_cfg item names should be '
                       f'prefixed with "opt/"\n')
    assert [s.fw_cfg_files for s in specs] == [[("opt/b", b"\0\1binary\xff"), ("etc/mine", b"x")]] * 2


@pytest.mark.parametrize("spelling, status, prefix", [("qemu", 1, "microvm: "), ("run", 2, "microvm: error: ")])
def test_an_empty_pidfile_name_is_refused_as_qemu_does(spelling, status, prefix, kernel: str, specs: list, capsys,
                                                       tmp_path, monkeypatch) -> None:
    """QEMU 7.2: -pidfile "" is 'cannot create PID file: Could not create '': No such file
    or directory', status 1; it was ignored here (a truth test on the value)."""
    monkeypatch.chdir(tmp_path)
    argv = ["-kernel", kernel, "-pidfile", ""] if spelling == "qemu" else ["run", "--kernel", kernel, "--pidfile", ""]
    rv, out, err = run_main(argv, capsys)
    assert (rv, out, specs) == (status, "", [])
    assert err == f"{prefix}cannot create PID file: Could not create '': No such file or directory\n"
    assert [p.name for p in tmp_path.iterdir()] == ["vmlinux"]          # nothing created


def test_every_qemu_option_maps_or_is_refused(capsys) -> None:
    """Each of QEMU 7.2's options is a run option, an action (-h, -version), a no-op microvm
    has nothing to do for, or refused as unsupported; no QEMU option is 'invalid' here."""
    mapped = set(BY_QEMU_NAME)
    for name in sorted(qemu.QEMU_ARG | qemu.QEMU_NOARG):
        argv = [f"-{name}"] + (["x"] if name in qemu.QEMU_ARG else [])
        if name in mapped:
            opts, action = qemu.parse_qemu(argv)
            assert action is None
            o = BY_QEMU_NAME[name]
            assert opts[o.dest] != (list(o.default) if o.kind == "list" else o.default), name
        elif name in qemu.ACTIONS:
            assert qemu.parse_qemu(argv)[1] in ("help", "version")
        elif name in qemu.NOOPS:
            expected = qemu.parse_qemu([])
            if name == "no-acpi":  # QEMU 7.2 sets the machine's acpi=off
                expected[0]["machine"] = ["acpi=off"]
            assert qemu.parse_qemu(argv) == expected
        else:
            with pytest.raises(qemu.QemuUsageError, match=f"^{re.escape(' '.join(argv))}: unsupported on microvm"):
                qemu.parse_qemu(argv)
    # the rows' QEMU names are QEMU's, except microvm's own two
    extensions = {n for o in RUN_OPTIONS for n in o.qemu} - qemu.QEMU_ARG - qemu.QEMU_NOARG
    assert extensions == {"metrics", "v"}
    # what the seed's examples use, all mapped
    assert {"M", "enable-kvm", "cpu", "m", "smp", "kernel", "append", "nodefaults", "no-user-config", "nographic",
            "serial", "drive", "device", "netdev", "chardev"} <= mapped


# ---- (2) refused lines: QEMU's form, status 1, one line, no traceback ---------------------------
REFUSED: dict[str, tuple[list[str], str]] = {
    "an option microvm lacks": (["-vga", "std"], r"-vga std: unsupported on microvm \(microvm has no display\)"),
    "a flag microvm lacks": (["-snapshot"], r"-snapshot: unsupported on microvm \(microvm has only virtio-mmio disks"),
    "not an option": (["-bogus"], r"-bogus: invalid option"),
    "three dashes": (["---version"], r"---version: invalid option"),
    "-opt=value is not QEMU's": (["-m=512"], r"-m=512: invalid option"),
    "missing argument": (["-m"], r"-m: requires an argument"),
    "missing argument of an unsupported option": (["-vga"], r"-vga: requires an argument"),
    "other target's option": (["-g", "800x600"], r"-g 800x600: Option not supported for this target"),
    "a disk image argument": (["disk.img"], r"disk.img: a disk image argument \(QEMU's IDE hard disk 0\) is unsupported"),
    "IDE disk": (["-hda", "disk.img"], r"-hda disk.img: unsupported on microvm \(microvm has only virtio-mmio disks"),
    "-m 12q": (["-m", "12q"], r"-m 12q: Parameter 'size' expects a non-negative number below 2\^64"),
    "-m size= (empty)": (["-m", "size="], r"-m size=: Parameter 'size' expects a non-negative number below 2\^64"),
    # an empty size anywhere is refused (only -m "" is the default), in QEMU 7.2's words (measured)
    "-m , (empty first size)": (["-m", ","], r"^microvm: -m ,: Parameter 'size' expects a non-negative number below 2\^64$"),
    "-m ,size=64": (["-m", ",size=64"], r"^microvm: -m ,size=64: Parameter 'size' expects a non-negative number below 2\^64$"),
    "-m ,128": (["-m", ",128"], r"^microvm: -m ,128: Parameter 'size' expects a non-negative number below 2\^64$"),
    "-m 128MB (QEMU refuses it)": (["-m", "128MB"], r"-m 128MB: Parameter 'size'"),
    "-m with hotplug": (["-m", "256,slots=2,maxmem=1G"], r"-m 256,slots=2,maxmem=1G: memory hotplug .* unsupported"),
    "-m unknown key": (["-m", "foo=1"], r"-m foo=1: Invalid parameter 'foo'"),
    "-smp not multiplying out": (["-smp", "3,sockets=2"], r"-smp 3,sockets=2: Invalid CPU topology: product of the hierarchy"),
    "-smp dies": (["-smp", "2,dies=2"], r"-smp 2,dies=2: dies not supported by this machine's CPU topology"),
    "-smp garbage": (["-smp", "abc"], r"-smp abc: Parameter 'smp.cpus' expects integer"),
    "-smp unknown key": (["-smp", "2,foo=1"], r"-smp 2,foo=1: Parameter 'smp.foo' is unexpected"),
    "-cpu other model": (["-cpu", "qemu64"], r"-cpu qemu64: unable to find CPU model 'qemu64' \(microvm offers host and max"),
    "-cpu unknown feature": (["-cpu", "host,+bogus"], r"-cpu host,\+bogus: unknown CPU feature 'bogus'"),
    "-cpu bad value": (["-cpu", "host,avx=maybe"], r"-cpu host,avx=maybe: Parameter 'avx' expects 'on' or 'off'"),
    "-accel tcg": (["-accel", "tcg"], r"-accel tcg: unsupported on microvm \(microvm runs on KVM only\)"),
    "-accel unknown": (["-accel", "foo"], r"-accel foo: invalid accelerator foo"),
    "-accel bad irqchip": (["-accel", "kvm,kernel-irqchip=bogus"],
                           r"-accel kvm,kernel-irqchip=bogus: Parameter 'kernel-irqchip' does not accept value 'bogus'"),
    "-accel unknown property": (["-accel", "kvm,bogus=1"], r"-accel kvm,bogus=1: Property 'kvm-accel.bogus' not found"),
    "-accel and -enable-kvm": (["-enable-kvm", "-accel", "kvm"], r'The -accel and "-machine accel=" options are incompatible'),
    "-M accel=tcg": (["-M", "microvm,accel=tcg"], r"-machine accel=tcg: unsupported on microvm"),
    "-M other machine": (["-M", "pc"], r"unsupported machine type 'pc': only 'microvm' is provided"),
    "-M unknown key": (["-M", "microvm,bogus=on"], r"unknown machine option 'bogus'; known: .*isa-serial"),
    "-M bad value": (["-M", "microvm,pit=maybe"], r"machine option pit=maybe: expected on, off or auto"),
    # QEMU 7.2 microvm's options for what microvm lacks: asking for the thing is refused
    "-M acpi=on": (["-M", "microvm,acpi=on"], r"^microvm: machine option acpi=on: unsupported on microvm \(microvm has no ACPI\)$"),
    "-M acpi=auto (QEMU's auto is on)": (["-M", "microvm,acpi=auto"], r"machine option acpi=auto: unsupported on microvm"),
    # without acpi=off QEMU's default acpi=auto builds these with ACPI; microvm has none
    "-M pcie=on without acpi=off": (["-M", "microvm,pcie=on"], r"^microvm: machine option pcie=on: unsupported on "
                                    r"microvm \(QEMU's microvm adds PCIe only with ACPI, which microvm does not have; "
                                    r"with acpi=off QEMU ignores it, as microvm does\)$"),
    "-M ioapic2=on without acpi=off": (["-M", "microvm,ioapic2=on"], r"machine option ioapic2=on: unsupported on "
                                       r"microvm \(QEMU's microvm adds a second IOAPIC only with ACPI"),
    "-M usb=on without acpi=off": (["-M", "microvm,usb=on"], r"machine option usb=on: unsupported on microvm "
                                   r"\(QEMU's microvm adds USB only with ACPI"),
    "-M smm=on": (["-M", "microvm,smm=on"], r"machine option smm=on: unsupported on microvm \(microvm has no System Management Mode\)"),
    "-M smm=auto (QEMU's auto is on under KVM)": (["-M", "microvm,smm=auto"], r"machine option smm=auto: unsupported on microvm"),
    "-M acpi=maybe": (["-M", "microvm,acpi=maybe"], r"machine option acpi=maybe: expected on, off or auto"),
    # -fw_cfg as QEMU 7.2's parse_fw_cfg refuses it (its words)
    "-fw_cfg without content": (["-fw_cfg", "opt/x"], r"^microvm: -fw_cfg opt/x: name, plus exactly one of file, "
                                r"string and gen_id, are needed$"),
    "-fw_cfg without a name": (["-fw_cfg", "string=a"], r"-fw_cfg string=a: name, plus exactly one of"),
    "-fw_cfg empty name": (["-fw_cfg", "name=,string=a"], r"-fw_cfg name=,string=a: name, plus exactly one of"),
    "-fw_cfg empty string": (["-fw_cfg", "opt/x,string="], r"-fw_cfg opt/x,string=: name, plus exactly one of"),
    "-fw_cfg file and string": (["-fw_cfg", "opt/x,file=f,string=s"], r"-fw_cfg opt/x,file=f,string=s: name, plus exactly one of"),
    "-fw_cfg gen_id": (["-fw_cfg", "name=opt/x,gen_id=g"], r"-fw_cfg name=opt/x,gen_id=g: gen_id is unsupported on microvm"),
    "-fw_cfg unknown key": (["-fw_cfg", "opt/x,foo=bar"], r"-fw_cfg opt/x,foo=bar: Invalid parameter 'foo'$"),
    "-fw_cfg name of 56 bytes": (["-fw_cfg", "opt/" + "a" * 52 + ",string=a"], r": name too long \(max. 55 char\)$"),
    "-fw_cfg missing file": (["-fw_cfg", "opt/x,file=/nonexistent-dir/f"],
                             r"-fw_cfg opt/x,file=/nonexistent-dir/f: can't load /nonexistent-dir/f: no such file$"),
    "-fw_cfg a directory": (["-fw_cfg", "opt/x,file=/"], r"-fw_cfg opt/x,file=/: can't load /: is a directory$"),
    "-fw_cfg a device": (["-fw_cfg", "opt/x,file=/dev/zero"],
                         r"can't load /dev/zero: not a regular file \(a character device\)$"),
    "-fw_cfg the same name twice": (["-fw_cfg", "opt/x,string=a", "-fw_cfg", "name=opt/x,string=b"],
                                    r"^microvm: -fw_cfg name=opt/x,string=b: duplicate fw_cfg file name: opt/x$"),
    "-M malformed": (["-M", "microvm,pit"], r"-M microvm,pit: Expected '=' after parameter 'pit'"),
    "-M empty item": (["-M", "microvm,,"], r"-M microvm,,: Invalid parameter ''"),
    "-display gtk": (["-display", "gtk"], r"-display gtk: unsupported on microvm \(microvm has no display"),
    "-display unknown": (["-display", "bogus"], r"-display bogus: Parameter 'type' does not accept value 'bogus'"),
    "-monitor stdio": (["-monitor", "stdio"], r"-monitor stdio: unsupported on microvm \(microvm has no human monitor"),
    "-chardev without id": (["-chardev", "stdio"], r"-chardev stdio: id=\.\.\. is required"),
    "-chardev duplicate id": (["-chardev", "null,id=a", "-chardev", "null,id=a"], r"-chardev: duplicate id 'a'"),
    "-drive duplicate id": (["-drive", "id=d,file=a", "-drive", "id=d,file=b"], r"-drive: duplicate id 'd'"),
    "-drive malformed": (["-drive", "id=d,file"], r"-drive: 'file' needs a value \(key=value\)"),
    "-netdev without id": (["-netdev", "tap"], r"-netdev tap: id=\.\.\. is required"),
    "-serial unknown": (["-serial", "bogus"], r"-serial bogus: expected stdio, mon:stdio, null, none, pty, file:PATH, "
                        r"pipe:PATH, unix:PATH\[,server=on\]\[,wait=off\], tcp:HOST:PORT\[,server=on\]\[,wait=off\] or chardev:ID"),
    "-nographic -daemonize": (["-nographic", "-daemonize"], r"-nographic cannot be used with -daemonize"),
    "-daemonize with stdio": (["-daemonize", "-display", "none", "-serial", "stdio"], r"-serial stdio: cannot use stdio with -daemonize"),
    "-daemonize with a stdio chardev": (["-daemonize", "-display", "none", "-chardev", "stdio,id=c"],
                                        r"-chardev stdio,id=c: cannot use stdio with -daemonize"),
    "-name unknown key": (["-name", "g,bogus=1"], r"-name g,bogus=1: Invalid parameter 'bogus'"),
    "-pidfile in a missing directory": (["-pidfile", "/nonexistent-dir/p.pid"],
                                        r"cannot create PID file: Could not create '/nonexistent-dir/p.pid': No such file or directory"),
    # the machine refuses these (run_spec runs for real; nothing reaches KVM)
    "-device unknown": (["-device", "foo"], r"-device foo: unknown device type \(available: .*virtio-blk-device"),
    "-netdev unknown backend": (["-netdev", "foo,id=n"], r"-netdev foo,id=n: no plugin provides this network backend"),
    "-device with an unknown property": (["-device", "virtio-rng-device,bogus=1"],
                                         r"virtio-rng-device: unknown property bogus \(valid: .*max-bytes"),
    # -bios works (docs/fw_cfg.md); a firmware that cannot be loaded is QEMU's line plus why
    "-bios missing": (["-bios", "no-such-bios.bin"], r"could not load PC BIOS 'no-such-bios.bin': no such file"),
}


def refused(argv: list[str], pattern: str, kernel: str, capsys) -> None:
    rv, out, err = run_main(["-kernel", kernel, *argv], capsys)
    assert rv == 1, (rv, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("microvm: ") and not lines[0].startswith("microvm: error:"), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    if not any(a.startswith("--") for a in argv):
        assert " --" not in lines[0], "QEMU's spelling names options with one dash"


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_option(case: str, kernel: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv, pattern = REFUSED[case]
    refused(argv, pattern, kernel, capsys)


@pytest.fixture
def without(monkeypatch):
    """Hide installed plugins (MICROVM_PLUGINS_DENY) from a fresh plugin host."""
    import microvm.plugins

    def hide(*names: str) -> None:
        monkeypatch.setenv("MICROVM_PLUGINS_DENY", ",".join(names))
        monkeypatch.setattr(microvm.plugins, "_HOST", None)

    yield hide
    microvm.plugins._HOST = None


@pytest.mark.parametrize("plugin, argv, dist", [
    ("virtio_blk", ["-drive", "id=d,file=x", "-device", "virtio-blk-device,drive=d"], "microvm-virtio-blk"),
    ("pit_i8254", ["-M", "microvm,pit=off"], "microvm-pit-i8254"),
    ("ioapic", ["-accel", "kvm,kernel-irqchip=split"], "microvm-ioapic"),
])
def test_what_is_not_installed_names_its_plugin(plugin, argv, dist, without, kernel, capsys) -> None:
    without(plugin)
    refused(argv, rf"provided by the {dist} plugin, not installed: pip install {dist}", kernel, capsys)


def test_devices_of_absent_plugins_are_named_in_device_help(without, capsys) -> None:
    without("virtio_rng")
    rv, out, err = run_main(["-device", "help"], capsys)
    assert rv == 0 and err == ""
    assert 'name "virtio-rng-device" (pip install microvm-virtio-rng)' in out.split("not installed:\n", 1)[1]


# ---- (3) introspection, generated from the declarations -----------------------------------------
def test_device_help_lists_every_installed_type(capsys) -> None:
    from microvm.plugins import plugin_host

    rv, out, err = run_main(["-device", "help"], capsys)
    assert (rv, err) == (0, "")
    installed = out.split("\n\n")[0].splitlines()
    assert installed[0] == "Devices of the installed plugins:"
    host = plugin_host()
    assert [re.match(r'name "([^"]+)"', ln).group(1) for ln in installed[1:]] == sorted(host.device_types)
    assert 'name "virtio-blk-device", bus virtio-bus, desc "' in out


@pytest.mark.parametrize("spelling", [["-device", "virtio-blk-device,help"], ["run", "--device", "virtio-blk-device,help"],
                                      ["-device", "virtio-blk-device,?"]])
def test_device_properties_in_qemus_layout(spelling: list[str], capsys) -> None:
    from microvm.plugins import plugin_host

    rv, out, err = run_main(spelling, capsys)
    assert (rv, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "virtio-blk-device options:"
    declared = plugin_host().device_types["virtio-blk-device"].properties
    names = [re.match(r"  ([^=]+)=<", ln).group(1) for ln in lines[1:]]
    assert names == sorted([p.name for p in declared] + ["force-legacy"])
    assert "  force-legacy=<bool>    - legacy (Version 1) virtio-mmio register layout, QEMU 7.2's default (default: true)" in lines
    for ln in lines[1:]:   # QEMU pads "  name=<type>" to 24 columns before " - "
        assert ln.index(" - ") >= 24 and (len(ln.split(" - ")[0]) <= 24 or ln.split(" - ")[0].rstrip() == ln.split(" - ")[0])


def test_machine_help_and_machine_options(capsys) -> None:
    rv, out, err = run_main(["-M", "help"], capsys)
    assert (rv, out, err) == (0, "Supported machines are:\nmicrovm              microvm (i386) (default)\n", "")
    rv, out, err = run_main(["-M", "microvm,help"], capsys)
    assert rv == 0 and out.startswith("microvm-machine options:\n")
    assert '  pic=<OnOffAuto>        - Enable i8259 PIC (default: "auto"; auto means on)' in out.splitlines()
    assert re.search(r"  kernel-irqchip=<str>   - .* \(auto means split when the ioapic plugin is installed, else on\)", out)
    assert "  isa-serial=<bool>      - Set off to disable the instantiation an ISA serial port (default: true)" in out


@pytest.mark.parametrize("text, values", [
    ("microvm,acpi=off", {"acpi": "off"}),
    ("microvm,acpi=off,pcie=off,ioapic2=off,usb=off,smm=off",
     {"acpi": "off", "pcie": "off", "ioapic2": "off", "usb": False, "smm": "off"}),
    ("microvm,pcie=auto,ioapic2=auto", {"pcie": "auto", "ioapic2": "auto"}),       # QEMU's auto: off without ACPI
    ("microvm,usb=no", {"usb": False}),
    ("microvm", {"acpi": "off", "pcie": "auto", "ioapic2": "auto", "usb": False, "smm": "off"}),
])
def test_qemus_options_for_what_microvm_lacks_take_their_off_value(text: str, values: dict) -> None:
    """QEMU users run microvm as `-M microvm,acpi=off` (QEMU 7.2 turns ACPI on by default):
    the value that describes microvm is accepted and changes nothing; the devices stay the
    same."""
    from microvm.plugins import plugin_host

    opts = plugin_host().options
    parsed = opts.parse_machine([text])
    assert {k: parsed[k] for k in values} == values
    assert opts.legacy_devices(parsed) == opts.legacy_devices(opts.parse_machine(["microvm"]))


def test_machine_help_lists_qemus_options_for_what_microvm_lacks(capsys) -> None:
    rv, out, _ = run_main(["-M", "microvm,help"], capsys)
    assert rv == 0
    lines = out.splitlines()
    assert any(ln.startswith("  acpi=<OnOffAuto>       - Enable ACPI: off only") for ln in lines), out
    assert any(ln.startswith("  pcie=<OnOffAuto>") and "auto means off" in ln for ln in lines), out
    for name in ("ioapic2=<OnOffAuto>", "smm=<OnOffAuto>", "usb=<bool>"):
        assert any(ln.startswith(f"  {name}") for ln in lines), name
    rv, out, _ = run_main(["machine"], capsys)
    assert rv == 0 and "  acpi=OnOffAuto (default off) [core]" in out and "  usb=bool (default off) [core]" in out


def test_backend_cpu_accel_display_help(capsys) -> None:
    assert run_main(["-chardev", "help"], capsys) == (0, "Available chardev backend types: \n  file\n  null\n  pipe\n  pty\n  socket\n  stdio\n", "")
    rv, out, _ = run_main(["-netdev", "help"], capsys)
    assert rv == 0 and out.startswith("Available netdev backend types:\n")
    rv, out, _ = run_main(["-cpu", "help"], capsys)
    assert rv == 0 and out.startswith("Available CPUs:\nx86 host                  processor with all supported host features\n")
    assert "arch-capabilities" in out and "x2apic" in out
    assert run_main(["-accel", "help"], capsys) == (0, "Accelerators supported in microvm:\nkvm\n", "")
    assert run_main(["-display", "help"], capsys) == (0, "Available display backend types:\nnone\n", "")


def test_unknown_device_help_is_an_error(capsys) -> None:
    rv, out, err = run_main(["-device", "nope,help"], capsys)
    assert rv == 1 and out == "" and err.startswith("microvm: -device nope,help: 'nope' is not a valid device model name")


def test_version_and_help(capsys) -> None:
    from microvm import __version__

    for spelling in (["-version"], ["--version"], ["-M", "microvm", "-version", "-bogus"]):
        rv, out, err = run_main(spelling, capsys)
        assert (rv, err) == (0, "")
        assert out.splitlines()[0] == f"QEMU emulator version 7.2.0 (microvm {__version__})"
    rv, out, err = run_main(["-h"], capsys)
    assert (rv, err) == (0, "")
    for o in RUN_OPTIONS:
        for q in o.qemu:
            assert re.search(rf"^-{re.escape(q)}\b", out, re.M), q
    assert run_main(["-help"], capsys)[1] == out and run_main(["--help"], capsys)[1] == out
    # an earlier error wins, as in QEMU
    assert run_main(["-bogus", "-version"], capsys)[:2] == (1, "")


# ---- (4) real processes --------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MICROVM_")}
    e["MICROVM_CACHE"] = str(tmp_path / "cache")
    return e


@pytest.mark.parametrize("argv, status, stderr", [
    (["-vga", "std"], 1, "microvm: -vga std: unsupported on microvm (microvm has no display)\n"),
    (["-bogus"], 1, "microvm: -bogus: invalid option\n"),
    (["-m"], 1, "microvm: -m: requires an argument\n"),
    (["-kernel", "/nonexistent", "-smp", "3,sockets=2"], 1,
     "microvm: -smp 3,sockets=2: Invalid CPU topology: product of the hierarchy must match maxcpus: "
     "sockets (2) * cores (1) * threads (1) != maxcpus (3)\n"),
    (["-M", "microvm", "-kernel", "/nonexistent", "-nodefaults"], 1, "microvm: kernel /nonexistent: no such file\n"),
])
def test_as_a_process(argv: list[str], status: int, stderr: str, env) -> None:
    r = subprocess.run([str(MICROVM), *argv], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stderr, r.stdout) == (status, stderr, "")


def test_python_dash_m_takes_the_qemu_spelling_too(env) -> None:
    r = subprocess.run([sys.executable, "-m", "microvm", "-version"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("QEMU emulator version 7.2.0 (microvm ")


# ---- (5) the default guest under QEMU's spelling -------------------------------------------------
def test_guest_path_prints_the_default_guests_files(monkeypatch, capsys) -> None:
    import microvm.guest
    from microvm.guest import GuestArtifacts

    g = GuestArtifacts.in_dir(Path("/cache/guest/abc"))
    monkeypatch.setattr(microvm.guest, "default_guest", lambda build=True, progress=None: g)
    assert run_main(["guest", "path", "vmlinux"], capsys) == (0, "/cache/guest/abc/vmlinux\n", "")
    assert run_main(["guest", "path", "bzImage"], capsys) == (0, "/cache/guest/abc/bzImage\n", "")
    assert run_main(["guest", "path", "initramfs"], capsys) == (0, "/cache/guest/abc/initramfs.cpio\n", "")
    rv, out, _ = run_main(["guest", "path"], capsys)
    assert rv == 0 and out.splitlines() == [
        "vmlinux   /cache/guest/abc/vmlinux", "bzImage   /cache/guest/abc/bzImage",
        "initramfs /cache/guest/abc/initramfs.cpio", f"cmdline   {g.cmdline}"]
    rv, out, err = run_main(["guest", "path", "kernel"], capsys)
    assert (rv, out) == (2, "") and err == "microvm: error: guest path kernel: expected one of vmlinux, bzImage, initramfs\n"


def test_guest_path_never_builds(env) -> None:
    r = subprocess.run([str(MICROVM), "guest", "path", "vmlinux"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("microvm: error: the default guest is not built") and "microvm guest build" in r.stderr
