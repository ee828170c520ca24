"""The hook glue: ``--netdev tap`` and ``--device virtio-net-device`` through the core's
declarations, on :class:`microvm.testing.TestMachine` (no KVM). A test-only netdev backend
(``socketpair``) hands the device a socketpair instead of a tap, so most of this runs
without root; the tap-backed cases at the end run in a network namespace of their own."""
from __future__ import annotations

import subprocess
import sys

import pytest

import microvm.api as C
from microvm.api import ConfigError, hookimpl
from microvm.testing import TestMachine
from microvm.virtio.testing import MmioDriver
from microvm_virtio_net import constants as N
from microvm_virtio_net import plugin as P
from virtio_net_testlib import RX_AREA, NetDriver, SocketTap, frame, vnet_hdr, wait_for

MEM_SIZE = 16 << 20


class SocketpairNetdev:
    """A netdev backend plugin for tests: ``--netdev socketpair,id=ID`` is a SocketTap."""

    def __init__(self) -> None:
        self.made: dict[str, SocketTap] = {}

    @hookimpl
    def register_backends(self, register):
        register("netdev", "socketpair", self.create, "a socketpair standing in for a tap (tests)")

    def create(self, ctx, netdev_id, props):
        tap = self.made[netdev_id] = SocketTap()
        return tap


class NotATap:
    """A netdev backend whose objects are not taps (a future 'user' backend, say)."""

    @hookimpl
    def register_backends(self, register):
        register("netdev", "notatap", lambda ctx, i, p: object(), "not a tap")


def machine(*devices: str, netdevs=("socketpair,id=n0",), plugins=None) -> tuple[TestMachine, SocketpairNetdev]:
    sp = SocketpairNetdev()
    m = TestMachine(devices=devices, netdevs=netdevs, plugins=plugins or [sp], mem_size=MEM_SIZE, serial=["none"])
    return m, sp


def nets(m: TestMachine) -> list:
    return [s.transport.backend for s in m.virtio_transports]


# -- what the plugin registers ------------------------------------------------------------------------
def test_registered_through_the_entry_point():
    from microvm.testing import plugin_hooks

    assert plugin_hooks(P) == {"register_backends", "register_device_types"}
    m, _ = machine()
    assert "virtio-net-device" in m.host.device_types and m.host.device_types["virtio-net-device"].virtio
    assert ("netdev", "tap") in m.host.backends
    assert {p.name for p in m.host.backends[("netdev", "tap")].properties} == {"ifname", "script", "downscript", "fd", "vnet_hdr"}
    m.close()


def test_placed_on_the_first_virtio_slot_legacy_by_default():
    m, sp = machine("virtio-net-device,netdev=n0")
    with m:
        m.create_devices()
        (slot,) = m.virtio_transports
        assert (slot.base, slot.irq, slot.name) == (0xFEB00E00, 12, "virtio-net:n0")
        assert slot.transport.legacy and slot.transport.device_id == C.VIRTIO_ID_NET
        net = slot.transport.backend
        assert net.tap is sp.made["n0"] and net.mtu is None  # QEMU: host_mtu=0, no MTU offered
        assert not slot.transport.device_features & (1 << N.VIRTIO_NET_F_MTU)
    assert sp.made["n0"].closed


# -- MAC addresses --------------------------------------------------------------------------------------
def test_default_macs_as_qemu_assigns_them():
    """52:54:00:12:34:56 for the first NIC without mac=, then the lowest free one; an
    explicit address of an earlier NIC in that range is skipped (QEMU's mac_table)."""
    m, _ = machine("virtio-net-device,netdev=a", "virtio-net-device,netdev=b,mac=52:54:00:12:34:57",
                   "virtio-net-device,netdev=c", "virtio-net-device,netdev=d,mac=02:00:00:00:00:01",
                   "virtio-net-device,netdev=e",
                   netdevs=[f"socketpair,id={i}" for i in "abcde"])
    with m:
        m.create_devices()
        macs = {n.name: n.mac.hex(":") for n in nets(m)}
    assert macs == {"virtio-net:a": "52:54:00:12:34:56", "virtio-net:b": "52:54:00:12:34:57",
                    "virtio-net:c": "52:54:00:12:34:58", "virtio-net:d": "02:00:00:00:00:01",
                    "virtio-net:e": "52:54:00:12:34:59"}


def test_mac_table_is_per_machine():
    for _ in range(2):
        m, _ = machine("virtio-net-device,netdev=n0")
        with m:
            m.create_devices()
            assert nets(m)[0].mac == bytes.fromhex("525400123456")


def test_mac_reaches_the_guest_through_the_registers():
    m, _ = machine("virtio-net-device,netdev=n0,mac=52:54:00:ab:cd:ef,id=nic0,force-legacy=off")
    with m:
        m.create_devices()
        (slot,) = m.virtio_transports
        drv = NetDriver(slot.transport)
        drv.probe()
        assert drv.mac == bytes.fromhex("525400abcdef") and slot.name == "nic0"  # the core names a device by its id=


def test_all_zero_mac_means_the_default_as_in_qemu():
    """QEMU 7.2 gives mac=00:00:00:00:00:00 the next default address (its 'info network'
    shows 52:54:00:12:34:56): all zeros is 'unset' there."""
    m, _ = machine("virtio-net-device,netdev=a,mac=00:00:00:00:00:00", "virtio-net-device,netdev=b",
                   netdevs=["socketpair,id=a", "socketpair,id=b"])
    with m:
        m.create_devices()
        assert [n.mac.hex(":") for n in nets(m)] == ["52:54:00:12:34:56", "52:54:00:12:34:57"]


# -- MTU --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prop,mtu", [("host_mtu=9000", 9000), ("mtu=9000", 9000), ("host_mtu=9000,mtu=9000", 9000),
                                      ("host_mtu=68", 68), ("host_mtu=65535", 65535), ("host_mtu=0x5dc", 1500)])
def test_mtu_offered(prop, mtu):
    m, _ = machine(f"virtio-net-device,netdev=n0,{prop}")
    with m:
        m.create_devices()
        (slot,) = m.virtio_transports
        assert slot.transport.device_features & (1 << N.VIRTIO_NET_F_MTU)
        assert MmioDriver(slot.transport).read_config(10, 2) == mtu


def test_host_mtu_0_offers_none():
    m, _ = machine("virtio-net-device,netdev=n0,host_mtu=0")
    with m:
        m.create_devices()
        (slot,) = m.virtio_transports
        assert not slot.transport.device_features & (1 << N.VIRTIO_NET_F_MTU)


# -- bad input: one line each -------------------------------------------------------------------------------
@pytest.mark.parametrize("device,match", [
    ("virtio-net-device", r"^virtio-net-device: netdev=\.\.\. is required"),
    ("virtio-net-device,netdev=n1", r"^netdev 'n1' not found \(defined netdevs: n0\)$"),
    ("virtio-net-device,netdev=n0,mac=52:54:00:12:34", r"^virtio-net-device: mac=52:54:00:12:34: not a MAC address"),
    ("virtio-net-device,netdev=n0,mac=52:54:00:12:34:zz", r"^virtio-net-device: mac=.*: not a MAC address"),
    ("virtio-net-device,netdev=n0,mac=52:54:00:12:34:5", r"^virtio-net-device: mac=52:54:00:12:34:5: not a MAC address"),
    ("virtio-net-device,netdev=n0,mac=2:54:0:12:34:56", r"^virtio-net-device: mac=2:54:0:12:34:56: not a MAC address"),
    ("virtio-net-device,netdev=n0,mac=01:00:5e:00:00:01,id=x", r"^virtio-net-device,id=x: mac=.*multicast"),
    ("virtio-net-device,netdev=n0,host_mtu=67", r"host_mtu=67 is outside 68\.\.65535"),
    ("virtio-net-device,netdev=n0,host_mtu=65536", r"host_mtu=65536 is outside 68\.\.65535"),
    ("virtio-net-device,netdev=n0,host_mtu=-1", r"host_mtu=-1 is outside 68\.\.65535"),
    ("virtio-net-device,netdev=n0,host_mtu=15x", r"host_mtu=15x"),
    ("virtio-net-device,netdev=n0,mtu=70000", r": mtu=70000 is outside"),
    ("virtio-net-device,netdev=n0,host_mtu=1500,mtu=9000", r"host_mtu=1500 and mtu=9000 disagree"),
    ("virtio-net-device,netdev=n0,speed=100", r"unknown property speed \(valid: "),
])
def test_bad_device_properties(device, match):
    sp = SocketpairNetdev()
    with pytest.raises(ConfigError, match=match) as e:  # when the machine is made, or its devices
        with TestMachine(devices=[device], netdevs=["socketpair,id=n0"], plugins=[sp], serial=["none"]) as m:
            m.create_devices()
    assert "\n" not in str(e.value)
    assert "n0" not in sp.made  # checked before the backend is opened


def test_two_devices_on_one_netdev():
    m, sp = machine("virtio-net-device,netdev=n0", "virtio-net-device,netdev=n0,id=second")
    with m, pytest.raises(ConfigError, match=r"^--device virtio-net-device,id=second: netdev n0 is already used by --device virtio-net-device$"):
        m.create_devices()
    m.close()
    assert sp.made["n0"].closed


def test_a_netdev_that_is_not_a_tap():
    m = TestMachine(devices=["virtio-net-device,netdev=u"], netdevs=["notatap,id=u"], plugins=[NotATap()], serial=["none"])
    with m, pytest.raises(ConfigError, match="netdev u is not a tap"):
        m.create_devices()


@pytest.mark.parametrize("netdev,match", [
    ("tap,id=n0,script=/etc/qemu-ifup", r"^netdev n0 \(tap\): script=/etc/qemu-ifup: microvm runs no host scripts"),
    ("tap,id=n0,downscript=/etc/qemu-ifdown", r"downscript=/etc/qemu-ifdown: microvm runs no host scripts"),
    ("tap,id=n0,ifname=a234567890123456", r"^tap a234567890123456: interface name is longer than 15 characters$"),
    ("tap,id=n0,fd=-1", r"fd=-1 is not a file descriptor"),
    # QEMU 7.2: "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and
    # vhostfds= are invalid with fd=" (the descriptor is set up already)
    ("tap,id=n0,fd=3,ifname=tap0", r"^netdev n0 \(tap\): ifname=, script=, downscript= and vnet_hdr= are invalid with fd= \(given: ifname=\)$"),
    ("tap,id=n0,fd=3,script=no,downscript=no", r"are invalid with fd= \(given: script=, downscript=\)$"),
    ("tap,id=n0,fd=3,vnet_hdr=on", r"are invalid with fd= \(given: vnet_hdr=\)$"),
    ("tap,id=n0,fd=-1,ifname=x", r"are invalid with fd="),
    ("tap,id=n0,vnet_hdr=maybe", r"vnet_hdr=maybe: expected on or off"),
    ("tap,id=n0,queues=4", r"unknown property queues \(valid: downscript, fd, ifname, script, vnet_hdr\)"),
])
def test_bad_tap_properties(netdev, match):
    """Refused before any /dev/net/tun is opened: no root needed to see these errors."""
    with pytest.raises(ConfigError, match=match) as e:
        m = TestMachine(devices=["virtio-net-device,netdev=n0"], netdevs=[netdev], serial=["none"])
        with m:
            m.create_devices()
    assert "\n" not in str(e.value)


def test_unknown_netdev_type_and_missing_id():
    with pytest.raises(ConfigError, match=r"^--netdev user,id=n0: no plugin provides this network backend \(available: tap\)$"):
        TestMachine(netdevs=["user,id=n0"], serial=["none"])
    with pytest.raises(ConfigError, match=r"^--netdev tap: id=\.\.\. is required$"):
        TestMachine(netdevs=["tap,ifname=x"], serial=["none"])


# -- the device in the machine: notifications, counters, NEEDS_RESET --------------------------------------
def test_frames_counters_and_needs_reset_through_the_core():
    """Frames both ways through the core's notification worker; the counters land in the
    device's group of the machine's metrics (what --metrics writes); a broken ring found
    by the device's own worker puts the transport in DEVICE_NEEDS_RESET."""
    m, sp = machine("virtio-net-device,netdev=n0")
    with m:
        m.create_devices()
        (slot,) = m.virtio_transports
        tap = sp.made["n0"]
        m.start()
        drv = NetDriver(slot.transport)
        rxq, txq = drv.probe()
        m.memory.fill(RX_AREA, 4096, 0xEE)
        head = rxq.add([(RX_AREA, 4096, True)])
        drv.notify(N.RX_QUEUE)
        tap.send(vnet_hdr() + frame(1000, seed=3))
        assert wait_for(rxq.get_used) == [(head, 1012)]
        m.memory.write(0x100000, vnet_hdr() + frame(200))
        txq.add([(0x100000, 212, False)])
        drv.notify(N.TX_QUEUE)
        assert tap.recv() == vnet_hdr() + frame(200)
        wait_for(txq.get_used)
        txq.add([(0x100000, 5, False)])  # shorter than the header: dropped, counted
        drv.notify(N.TX_QUEUE)
        wait_for(txq.get_used)
        group = m.metrics.snapshot()["devices"]["virtio-net:n0"]
        assert {k: group[k] for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_dropped", "bad_chains", "rx_dropped")} == {
            "rx_packets": 1, "rx_bytes": 1000, "tx_packets": 1, "tx_bytes": 200, "tx_dropped": 1, "bad_chains": 1, "rx_dropped": 0}
        assert group["notifications"] >= 3 and group["interrupts"] >= 1
        rxq.add([(MEM_SIZE, 64, True)])  # outside RAM: found by the device's worker
        drv.notify(N.RX_QUEUE)
        wait_for(drv.needs_reset)
        assert drv.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) & C.VIRTIO_MMIO_INT_CONFIG
        assert m.metrics.snapshot()["devices"]["virtio-net:n0"]["needs_reset"] == 1


# -- on real taps (root, in a namespace of the test's own) -------------------------------------------------
def test_tap_backend_creates_the_interface_and_the_device_owns_it(netns):
    m = TestMachine(devices=["virtio-net-device,netdev=n0,mac=52:54:00:12:34:99"],
                    netdevs=["tap,id=n0,ifname=mvnic0,script=no,downscript=no"], serial=["none"], mem_size=MEM_SIZE)
    with m:
        m.create_devices()
        assert netns.exists("mvnic0")
        net = nets(m)[0]
        assert net.tap.ifname == "mvnic0" and net.tap.created and net.vnet_hdr
    assert not netns.exists("mvnic0")


def _kernel(tmp_path) -> str:
    """A kernel the machine accepts before it fails: the tiny PVH test guest."""
    from kvm_helpers import build_guest, kvm_reason

    why = kvm_reason()
    if why is not None:
        pytest.skip(f"needs KVM: {why}")
    return str(build_guest("hello-pvh", tmp_path))


def _microvm(netns, *args: str) -> subprocess.CompletedProcess:
    argv = netns.exec_argv(sys.executable, "-m", "microvm", "run", *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_run_that_fails_to_start_leaves_no_interface(netns, tmp_path):
    """The tap is created by the NIC's factory; a later --device fails; the VMM exits 2
    with one line and the interface is gone (with -v the log shows it was created)."""
    kernel = _kernel(tmp_path)
    args = ["--kernel", kernel, "--netdev", "tap,id=n0,ifname=mvfail0,script=no,downscript=no",
            "--device", "virtio-net-device,netdev=n0", "--device", "virtio-blk-device,drive=nothere", "--no-reboot"]
    r = _microvm(netns, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "microvm: error: drive 'nothere' not found (defined drives: none)\n"
    assert not netns.exists("mvfail0") and netns.links() == ["lo"]
    r = _microvm(netns, *args, "-v")
    assert r.returncode == 2 and "tap mvfail0: created" in r.stderr, r.stderr
    assert netns.links() == ["lo"]


def test_a_run_whose_second_nic_is_refused_leaves_no_interface(netns, tmp_path):
    kernel = _kernel(tmp_path)
    r = _microvm(netns, "--kernel", kernel, "--netdev", "tap,id=a,ifname=mvok0", "--netdev", "tap,id=b,ifname=b234567890123456",
                 "--device", "virtio-net-device,netdev=a", "--device", "virtio-net-device,netdev=b", "--no-reboot")
    assert r.returncode == 2 and r.stderr == "microvm: error: tap b234567890123456: interface name is longer than 15 characters\n"
    assert netns.links() == ["lo"]


def test_attaching_to_a_busy_interface_names_it(netns, tmp_path):
    kernel = _kernel(tmp_path)
    from microvm_virtio_net.tap import Tap

    with Tap.open("mvbusy0"):
        r = _microvm(netns, "--kernel", kernel, "--netdev", "tap,id=n0,ifname=mvbusy0",
                     "--device", "virtio-net-device,netdev=n0", "--no-reboot")
    assert r.returncode == 2 and r.stderr.startswith("microvm: error: tap mvbusy0: ") and r.stderr.count("\n") == 1, r.stderr
    assert "busy" in r.stderr
