"""The console under a real Linux (the default guest's kernel, Linux 6.1).

* The seed's second machine in ``microvm run`` spelling: every legacy device off
  (``x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off``), ``console=hvc0`` on
  ``-chardev stdio`` + ``virtio-serial-device`` + ``virtconsole``, a virtio-blk ext4 root
  (the kernel without its initramfs; ``/sbin/init`` is ``jmp .``), 2 vCPUs, 512 MiB (about
  3.5 minutes on an emulating host). The kernel log arrives through virtconsole on stdio,
  every byte the guest's console driver hands the device, in order, none dropped, from the
  first line hvc0 prints to the end of the boot. (Not from ``Linux version`` on: Linux 6.1's
  ``virtio_console`` registers hvc0 with ``hvc_alloc()`` before it puts the port on the list
  ``put_chars()`` searches, so the log buffer replayed at registration, "console [hvc0]
  enabled" included, is discarded inside the guest; the device sees none of it, with QEMU
  too.) Magic SysRq typed on the console's input (Ctrl-O then a key: Linux's hvc driver with
  ``sysrq_always_enabled``) prints the SysRq help, proving input; a second port,
  ``virtserialport`` named ``org.microvm.test`` on a unix socket server, reaches PORT_READY
  and its name goes to the guest, and a client connecting reaches it as PORT_OPEN (checked
  from the device's counters, ``--metrics``).
* The 16550 console on ``-serial unix:PATH,server=on,wait=off``, read by ``socat`` while the
  default guest (128 MiB) boots.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kvm_helpers import microvm_cmd, requires_kvm
from linux_images import ConsoleSession, build_spin_init, make_ext4, make_rootdir, missing_tools

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]

SEED_TIMEOUT = 1200  # 512 MiB, 2 vCPUs: about 3.5 minutes here, much longer under load
BOOT_TIMEOUT = 420
#: how long the 16550 test waits for the VMM's socket file before calling the VMM hung
SOCKET_HANG_GUARD = 120
SEED_MACHINE = "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off"
SEED_CMDLINE = "console=hvc0 root=/dev/vda rw sysrq_always_enabled reboot=t panic=1"
HVC_SYSRQ = b"\x0f"  # Ctrl-O: hvc_console's SysRq prefix


@pytest.fixture(scope="session")
def default_guest():
    from microvm.guest import default_guest as get

    return get(build=True, progress=lambda s: print(f"guest build: {s}"))


@pytest.fixture
def root_image(tmp_path) -> Path:
    missing = missing_tools("as", "ld", "mkfs.ext4")
    if missing:
        pytest.skip(f"needs binutils and e2fsprogs ({', '.join(missing)} not found) for the ext4 root")
    init = build_spin_init(tmp_path / "build/init")
    return make_ext4(tmp_path / "root.img", make_rootdir(tmp_path / "root", init), "32M")


@pytest.fixture(scope="session")
def socat() -> str:
    found = shutil.which("socat")
    if found is None:
        try:
            subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"socat is not installed and installing Debian's socat failed: {e}")
        found = shutil.which("socat")
        if found is None:
            pytest.skip("socat is not installed and apt-get did not provide it")
    return found


def _hvc_sysrq_until(s: ConsoleSession, key: str, marker: str | None, tries: int = 3) -> bool:
    """Ctrl-O then ``key`` on the hvc console, until ``marker`` (None: until the VMM exits)."""
    for _ in range(tries):
        s.wait_quiet(2.0, timeout=30)
        if s.proc.poll() is not None:
            return marker is None
        s.send(HVC_SYSRQ)
        time.sleep(0.5)
        s.send(key.encode())
        if marker is None:
            if s.wait(timeout=60) is not None:
                return True
        elif s.wait_for(marker, timeout=60):
            return True
    return False


def test_seed_second_machine_console_on_virtconsole(default_guest, root_image, tmp_path):
    port_sock = tmp_path / "port1.sock"
    metrics = tmp_path / "metrics.json"
    cmd = microvm_cmd(
        "run", "-M", SEED_MACHINE, "-m", "512M", "--smp", "2",
        "--nodefaults",  # as the example: no default serial chardev on stdio
        "--chardev", "stdio,id=virtiocon0",
        "--device", "virtio-serial-device",
        "--device", "virtconsole,chardev=virtiocon0",
        "--chardev", f"socket,id=port1,path={port_sock},server=on,wait=off",
        "--device", "virtserialport,chardev=port1,name=org.microvm.test",
        "--drive", f"id=test,file={root_image},format=raw,if=none",
        "--device", "virtio-blk-device,drive=test",
        "--kernel", str(default_guest.vmlinux), "--append", SEED_CMDLINE,
        "--no-reboot", "--metrics", str(metrics), "-v",
    )
    client = None
    with ConsoleSession(cmd, timeout=SEED_TIMEOUT) as s:
        booted = s.wait_for("Run /sbin/init")
        helped = False
        if booted:
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(port_sock))  # the host side of port 1 opens: PORT_OPEN(1)
            helped = _hvc_sysrq_until(s, "h", "sysrq: HELP")
            _hvc_sysrq_until(s, "b", None)
        status = s.wait()
        tail = s.tail()
        out, err = s.text, s.errtext
    if client is not None:
        client.close()
    assert booted, f"no 'Run /sbin/init' on the virtio console{tail}"
    assert helped, f"no SysRq help after Ctrl-O h on the console's input{tail}"
    assert status == 0, f"the VMM did not exit 0 after SysRq b{tail}"
    # the log came through hvc0 on stdio (the 16550 is off): whole lines from the first one
    # hvc0 printed, the root mount and init among them, and every byte the guest sent
    assert out.startswith("["), f"stdout does not start with a kernel log line{tail}"
    for line in ("VFS: Mounted root (ext4 filesystem) on device", "Run /sbin/init", "sysrq: HELP"):
        assert line in out, f"{line!r} missing from the console{tail}"
    devices = json.loads(metrics.read_text())["devices"]
    con = devices["chardev.virtiocon0"]
    assert con["bytes_dropped"] == 0 and con["bytes_written"] == len(s.out), (con, len(s.out))
    dev = devices["virtio-serial-device"]
    assert dev["port0.bytes_out"] == len(s.out), (dev, len(s.out))
    assert dev["port0.ready"] == 1 and dev["port0.guest_opens"] == 1, dev  # hvc0 opened port 0
    assert dev["port1.ready"] == 1, dev  # the guest answered PORT_ADD with PORT_READY
    assert dev["port1.name_sent"] == 1, dev  # ... and got PORT_NAME org.microvm.test
    assert dev["port1.host_opens"] == 1, dev  # the client's connect, sent as PORT_OPEN(1)
    assert dev.get("control_bad", 0) == 0 and dev["needs_reset"] == 0, dev  # counters start at first use
    assert "port 1: name 'org.microvm.test' sent" in err, tail


def test_16550_console_on_a_unix_socket_read_by_socat(default_guest, socat, tmp_path):
    sock = tmp_path / "com1.sock"
    cmd = microvm_cmd("run", "--kernel", str(default_guest.vmlinux), "--initrd", str(default_guest.initramfs),
                      "--append", default_guest.cmdline, "--serial", f"unix:{sock},server=on,wait=off",
                      "--no-reboot")
    vmm = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    reader = None
    got = bytearray()
    status = None
    try:
        # a hang guard, not a performance bound: binding happens before the guest runs, well
        # within a second; only a VMM stuck before its socket exists gets this far
        hang_guard = time.monotonic() + SOCKET_HANG_GUARD
        while not sock.exists():
            if vmm.poll() is not None:
                pytest.fail(f"the VMM ended (status {vmm.returncode}) before its socket existed: "
                            f"{vmm.stderr.read()[-2000:]!r}")
            if time.monotonic() > hang_guard:
                pytest.fail(f"no socket file {sock} after {SOCKET_HANG_GUARD} s: the VMM hangs before binding it")
            time.sleep(0.01)
        reader = subprocess.Popen([socat, "-u", f"UNIX-CONNECT:{sock}", "STDOUT"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)

        def drain() -> None:
            for chunk in iter(lambda: reader.stdout.read1(65536), b""):
                got.extend(chunk)

        pump = threading.Thread(target=drain, daemon=True)
        pump.start()
        try:  # init dies on this host, and panic=1 reboot=t ends the VMM
            status = vmm.wait(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        pump.join(timeout=30)  # the server closed: socat sees the end of the stream
    finally:
        for p in (vmm, reader):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL) if p is vmm else p.kill()
                p.wait()
    text = got.decode(errors="replace")
    tail = (f"\n--- VMM status {status}; socat got (tail):\n{text[-3000:]}"
            f"\n--- VMM stderr: {vmm.stderr.read()[-2000:]!r}")
    assert "Run /init" in text, f"the boot did not reach socat{tail}"
    assert status == 0, tail
    assert vmm.stdout.read() == b"", "the console went to the socket, not to stdout"
    assert not sock.exists()
