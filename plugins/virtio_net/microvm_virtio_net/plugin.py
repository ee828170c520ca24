"""Hook glue for ``--netdev tap,...`` and ``--device virtio-net-device,netdev=ID,...``,
spelled as QEMU 7.2 spells them (``-netdev``/``-device`` work too).

* the netdev backend ``tap``: ``id=ID[,ifname=NAME][,script=no][,downscript=no][,fd=N]
  [,vnet_hdr=on|off]``. microvm never runs host scripts: ``script=``/``downscript=`` other
  than ``no`` are refused, and without ``script=`` no script runs either (QEMU would run
  ``/etc/qemu-ifup``): configure the interface yourself (or let a parent hand over
  ``fd=``);
* the device ``virtio-net-device``: ``netdev=ID`` (required), ``mac=``, QEMU's
  ``host_mtu=`` (0, the default: no VIRTIO_NET_F_MTU, as in QEMU; ``mtu=`` is accepted as
  another spelling), and the transport's ``force-legacy`` (added by the core, which places
  the device: ``virtio=True``).

Default MAC addresses are QEMU's (52:54:00:12:34:56, then ...:57, skipping addresses given
explicitly to earlier NICs), from one table per machine kept in ``ctx.devices``.

Written against :mod:`microvm.api` only; the device and the tap are imported inside the
factories, so loading the plugin costs nothing.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import ConfigError, Property, hookimpl

TAP_PROPERTIES = (
    Property("ifname", "str", None, "the tap interface to create or attach to (at most 15 characters; default: tapN)"),
    Property("script", "str", None, "only 'no': microvm runs no host scripts (none runs when it is absent)"),
    Property("downscript", "str", None, "only 'no': microvm runs no host scripts"),
    Property("fd", "int", None, "an inherited, already attached tap descriptor (instead of ifname=)"),
    Property("vnet_hdr", "bool", None, "virtio-net headers on the tap (default: on when the kernel has them)"),
)

NET_PROPERTIES = (
    Property("netdev", "str", required=True, help="the --netdev id=ID this NIC is connected to"),
    Property("mac", "str", None, "the NIC's MAC address (default: QEMU's 52:54:00:12:34:56, then the next)"),
    Property("host_mtu", "int", 0, "offer VIRTIO_NET_F_MTU with this MTU (68-65535; 0: not offered), QEMU's name"),
    Property("mtu", "int", None, "the same as host_mtu"),
)

#: where this plugin keeps the machine's default-MAC table (``ctx.devices`` is per boot)
MAC_TABLE = "virtio_net.mac_table"


def _check_script(netdev_id: str, key: str, value: str | None) -> None:
    if value is not None and value != "no":
        raise ConfigError(f"netdev {netdev_id} (tap): {key}={value}: microvm runs no host scripts; "
                          f"set up the interface beforehand and use {key}=no")


def create_tap(ctx: Any, netdev_id: str, props: Any) -> Any:
    """Factory of the ``tap`` netdev backend: the open tap (created, attached or inherited)."""
    if props.fd is not None:
        # QEMU 7.2's net_init_tap refuses these next to fd= (and helper=, queues=, fds=,
        # vhostfds=, which microvm does not know): the descriptor is already set up
        given = [k for k in ("ifname", "script", "downscript", "vnet_hdr") if props[k] is not None]
        if given:
            raise ConfigError(f"netdev {netdev_id} (tap): ifname=, script=, downscript= and vnet_hdr= are invalid "
                              f"with fd= (given: {', '.join(k + '=' for k in given)})")
        if props.fd < 0:
            raise ConfigError(f"netdev {netdev_id} (tap): fd={props.fd} is not a file descriptor")
    _check_script(netdev_id, "script", props.script)
    _check_script(netdev_id, "downscript", props.downscript)
    from .tap import open_tap  # lazily: only a machine with a tap pays for it

    return open_tap(ifname=props.ifname, fd=props.fd, vnet_hdr=props.vnet_hdr)


def _mac_table(ctx: Any) -> Any:
    table = ctx.devices.get(MAC_TABLE)
    if table is None:
        from .mac import MacAllocator

        table = ctx.devices[MAC_TABLE] = MacAllocator()
    return table


def create_virtio_net(ctx: Any, props: Any) -> Any:
    """Factory of ``virtio-net-device``: the device on the tap of ``netdev=``.

    Everything the user wrote is checked before the tap is opened, so a bad MAC opens (and
    creates) no interface; the core closes a tap it made when a later step fails."""
    from .constants import MAX_MTU, MIN_MTU
    from .mac import parse_mac

    owner = "virtio-net-device" + (f",id={props.id}" if props.id else "")
    try:
        mac = parse_mac(props.mac) if props.mac is not None else None
    except ConfigError as e:
        raise ConfigError(f"{owner}: {e}") from None
    if mac == bytes(6):  # QEMU's qemu_macaddr_default_if_unset: all zeros means "not given"
        mac = None
    mtu, key = props.host_mtu, "host_mtu"
    if props.mtu is not None:
        if "host_mtu" in props.given and props.host_mtu != props.mtu:
            raise ConfigError(f"{owner}: host_mtu={props.host_mtu} and mtu={props.mtu} disagree")
        mtu, key = props.mtu, "mtu"
    # virtio 1.2 §5.1.4.1: the device offers an MTU of 68 to 65535 (QEMU's host_mtu is a
    # uint16, and QEMU does not check the lower bound); 0 offers none, QEMU's default
    if mtu != 0 and not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"{owner}: {key}={mtu} is outside {MIN_MTU}..{MAX_MTU} (0: no MTU offered)")
    table = _mac_table(ctx)
    if mac is None:
        mac = table.allocate()
    else:
        table.use(mac)
    tap = ctx.netdev(props.netdev)  # one device per netdev: the core refuses a second user
    if not hasattr(tap, "set_offload"):
        raise ConfigError(f"{owner}: netdev {props.netdev} is not a tap (virtio-net-device needs one)")
    from .device import VirtioNet

    # the tap is the machine's (ctx.netdev): it lives across guest resets, the core closes it
    return VirtioNet(tap, mac=mac, mtu=mtu or None, name=f"virtio-net:{props.id or props.netdev}", owns_tap=False)


@hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register("netdev", "tap", create_tap, "a Linux tap interface (/dev/net/tun), no scripts",
             properties=TAP_PROPERTIES)


@hookimpl
def register_device_types(register: Callable[..., None]) -> None:
    register("virtio-net-device", create_virtio_net, "virtio network device on a --netdev tap",
             properties=NET_PROPERTIES, virtio=True)
