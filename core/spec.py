"""What the user asked for: the machine description the command line (or an embedding
program) produces and :class:`microvm.machine.Machine` builds from."""
from __future__ import annotations

from typing import Any

from .config import (
    ChardevConfig,
    DeviceConfig,
    DriveConfig,
    NetdevConfig,
    SerialConfig,
    parse_props,
)
from .errors import ConfigError

__all__ = ["MAX_SMP", "MachineSpec", "parse_props"]

MAX_SMP = 255
class MachineSpec:
    """The machine to build (plain class: ``dataclasses`` costs start-up time).

    ``drives``, ``chardevs``, ``netdevs``, ``devices`` and ``serial`` take the command line's
    strings (or the typed configs of :mod:`microvm.config`, for embedding programs);
    :meth:`validate` parses them once into ``drive_configs``, ``chardev_configs``,
    ``netdev_configs`` (by id), ``device_configs`` and ``serial_configs`` (in order).
    ``metrics`` names a file the counters are written to as JSON when the VM ends.
    ``topology`` (a :class:`microvm.topology.CpuTopology`, from ``-smp ...,sockets=...``)
    lays out ``smp`` vCPUs in packages, cores and threads (default: one package of ``smp``
    cores); ``cpu`` is ``-cpu``'s text (``host[,+feature|-feature...]``); ``name`` is
    ``-name``'s guest name.
    """

    def __init__(
        self,
        kernel: str | None = None,
        initrd: str | None = None,
        append: str = "",
        mem_size: int = 128 << 20,        # QEMU's default -m
        smp: int = 1,
        no_reboot: bool = False,
        machine: list[str] | None = None,    # raw -M strings
        devices: list[Any] | None = None,    # --device strings or DeviceConfig
        drives: list[Any] | None = None,     # --drive strings or DriveConfig
        chardevs: list[Any] | None = None,   # --chardev strings or ChardevConfig
        netdevs: list[Any] | None = None,    # --netdev strings or NetdevConfig
        serial: list[str] | None = None,
        extra_plugins: list[Any] | None = None,
        metrics: str | None = None,
        bios: str | None = None,
        qmp: list[str] | None = None,        # --qmp ADDRESS (QEMU's -qmp)
        mon: list[str] | None = None,        # --mon chardev=ID,mode=control (QEMU's -mon)
        prelaunch: bool = False,             # -S: start paused until QMP cont
        no_shutdown: bool = False,           # --no-shutdown: stop, not exit, on a shutdown
        name: str | None = None,             # --name (QEMU's -name), for query-name
        topology: Any = None,                # -smp's sockets/cores/threads (microvm.topology)
        cpu: str = "host",                   # -cpu host[,+feature,-feature]
        fw_cfg: list[Any] | None = None,     # --fw-cfg [name=]NAME,file=P|string=S, or (name, bytes)
    ) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.mem_size = mem_size
        self.smp = smp
        self.no_reboot = no_reboot
        self.machine = list(machine or [])
        self.devices = list(devices or [])
        self.drives = list(drives or [])
        self.chardevs = list(chardevs or [])
        self.netdevs = list(netdevs or [])
        self.serial = list(serial) if serial is not None else ["mon:stdio"]
        self.extra_plugins = list(extra_plugins or [])
        self.metrics = metrics
        #: ``-bios``: a firmware image (path, or a bare name searched in the firmware
        #: directories); None for a direct kernel boot
        self.bios = bios
        #: ``--fw-cfg`` (QEMU's ``-fw_cfg``): the command line's texts, or (name, bytes)
        self.fw_cfg = list(fw_cfg or [])
        #: the files they give, (name, bytes) in order: read once, by :meth:`validate`
        self.fw_cfg_files: list[tuple[str, bytes]] = []
        self._fw_cfg_read: tuple[Any, ...] | None = None
        self.qmp = list(qmp or [])
        self.mon = list(mon or [])
        self.prelaunch = prelaunch
        self.no_shutdown = no_shutdown
        self.name = name
        #: chardev id -> QMP address, for the socket chardevs a --mon took (set by validate)
        self.monitor_chardevs: dict[str, str] = {}
        self.topology = topology
        self.cpu = cpu
        #: ``-cpu``'s feature flags, parsed by :meth:`validate`
        self.cpu_features: dict[str, bool] = {}
        self.drive_configs: dict[str, DriveConfig] = {}
        self.chardev_configs: dict[str, ChardevConfig] = {}
        self.netdev_configs: dict[str, NetdevConfig] = {}
        self.device_configs: list[DeviceConfig] = []
        self.serial_configs: list[SerialConfig] = []

    def __repr__(self) -> str:
        skip = ("cpu_features", "fw_cfg_files", "_fw_cfg_read")
        return f"MachineSpec({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.endswith('_configs') and k not in skip)})"

    def validate(self) -> None:
        """Check the sizes and parse every option list into its typed config (once)."""
        if self.mem_size <= 0:
            raise ConfigError("-m: guest memory must be larger than 0")
        if self.mem_size < 2 << 20:
            raise ConfigError(f"-m {self.mem_size}: at least 2 MiB of guest memory are needed")
        if self.mem_size & 0xFFF:
            raise ConfigError("-m: guest memory must be a multiple of 4 KiB")
        if not 1 <= self.smp <= MAX_SMP:
            raise ConfigError(f"--smp {self.smp}: the number of vCPUs must be between 1 and {MAX_SMP}")
        from .topology import CpuTopology

        if self.topology is None:
            self.topology = CpuTopology.flat(self.smp)
        elif self.topology.cpus != self.smp:
            raise ConfigError(f"--smp: the topology has {self.topology.cpus} vCPUs, the machine {self.smp}")
        self._machine_boot_opts()
        if self.cpu != "host":
            from .boot.cpufeatures import parse_cpu

            _, self.cpu_features = parse_cpu(self.cpu)
        if tuple(self.fw_cfg) != self._fw_cfg_read:  # a guest reset validates again: read once
            self.fw_cfg_files = _fw_cfg_files(self.fw_cfg)
            self._fw_cfg_read = tuple(self.fw_cfg)
        self.drive_configs = _by_id("--drive", self.drives, DriveConfig)
        self.chardev_configs = _by_id("--chardev", self.chardevs, ChardevConfig)
        self.netdev_configs = _by_id("--netdev", self.netdevs, NetdevConfig)
        self.device_configs = [d if isinstance(d, DeviceConfig) else DeviceConfig.parse(d) for d in self.devices]
        self.serial_configs = [SerialConfig.parse(s, i) for i, s in enumerate(self.serial)]
        if self.metrics is not None:
            from .metrics import check_metrics_path

            check_metrics_path(self.metrics)
        self.monitor_chardevs = {}
        for text in self.mon:
            chardev_id, address = _monitor_address(text, self.chardev_configs)
            if chardev_id in self.monitor_chardevs:
                raise ConfigError(f"--mon {text}: chardev {chardev_id} already has a monitor")
            self.monitor_chardevs[chardev_id] = address
        for s in self.serial_configs:
            if s.ref is not None and s.ref in self.monitor_chardevs:
                raise ConfigError(f"--serial {s.text}: chardev {s.ref} is used by a monitor (--mon)")
            if s.ref is not None and s.ref not in self.chardev_configs:
                raise ConfigError(f"--serial {s.text}: no --chardev with id={s.ref}")
            if s.chardev is not None and s.chardev.id in self.chardev_configs:
                raise ConfigError(f"--serial {s.text}: id {s.chardev.id} is taken by a --chardev")


    def _machine_boot_opts(self) -> None:
        """``-M kernel=/initrd=/append=/firmware=`` are ``kernel``, ``initrd``, ``append``
        and ``bios`` (QEMU's machine properties behind -kernel, -initrd, -append, -bios): the
        command line moved them already; a spec made by a program gets the same meaning."""
        from .options import split_boot_opts

        machine = []
        for text in self.machine:
            kept, boot = split_boot_opts(text)
            for key, value in boot.items():
                setattr(self, key, value)
            if kept is not None:
                machine.append(kept)
        self.machine = machine

    def mon_addresses(self) -> dict[str, str]:
        """The QMP address of each ``--mon`` (by chardev id), once validated."""
        return dict(self.monitor_chardevs)


def _fw_cfg_files(items: list[Any]) -> list[tuple[str, bytes]]:
    """``--fw-cfg`` texts (or (name, bytes) pairs) → (name, bytes), a name given twice
    refused as QEMU's fw_cfg_add_file refuses it."""
    files: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            from .boot.firmware import parse_fw_cfg_option

            name, data = parse_fw_cfg_option(item)
            where = f"--fw-cfg {item}"
        else:
            name, data = item
            where = f"--fw-cfg {name}"
        if name in seen:
            raise ConfigError(f"{where}: duplicate fw_cfg file name: {name}")
        seen.add(name)
        files.append((name, bytes(data)))
    return files


#: the socket chardev keys a QMP monitor understands (QEMU's -chardev socket)
_MON_SOCKET_KEYS = ("path", "host", "port", "server", "wait")


def _monitor_address(text: str, chardevs: dict[str, ChardevConfig]) -> tuple[str, str]:
    """``chardev=ID,mode=control[,pretty=off]`` (QEMU's -mon) on ``--chardev
    socket,id=ID,path=P|host=H,port=N,server=on[,wait=on|off]``: (ID, the QMP address in
    ``-qmp`` syntax). QEMU's defaults: mode=readline (HMP, not supported here), wait=on."""
    props = parse_props(text, positional="chardev", what="--mon")
    chardev_id = props.pop("chardev", "")
    mode = props.pop("mode", "readline")
    pretty = props.pop("pretty", "off")
    if props:
        raise ConfigError(f"--mon {text}: unknown option {next(iter(props))!r} (chardev=ID,mode=control)")
    if not chardev_id:
        raise ConfigError(f"--mon {text}: chardev=ID is required")
    if mode != "control":
        raise ConfigError(f"--mon {text}: only mode=control (QMP) is supported; the HMP monitor (mode=readline) is not")
    if pretty not in ("off", "false", "no"):
        raise ConfigError(f"--mon {text}: pretty=on is not supported (replies are one line each)")
    cfg = chardevs.get(chardev_id)
    if cfg is None:
        known = ", ".join(sorted(chardevs)) or "none"
        raise ConfigError(f"--mon {text}: chardev {chardev_id!r} not found (defined chardevs: {known})")
    if cfg.backend != "socket":
        raise ConfigError(f"--mon {text}: chardev {chardev_id} is {cfg.backend!r}; a QMP monitor needs a socket chardev")
    p = dict(cfg.props)
    extra = [k for k in p if k not in _MON_SOCKET_KEYS]
    if extra:
        raise ConfigError(f"--chardev socket,id={chardev_id}: option {extra[0]!r} is not supported for a monitor "
                          f"({', '.join(_MON_SOCKET_KEYS)})")
    server = p.get("server", "off")
    if server not in ("on", "true", "yes"):
        raise ConfigError(f"--chardev socket,id={chardev_id}: a monitor socket must listen (server=on)")
    wait = p.get("wait", "on")
    if wait not in ("on", "off", "true", "false", "yes", "no"):
        raise ConfigError(f"--chardev socket,id={chardev_id}: wait={wait}: expected on or off")
    wait = "on" if wait in ("on", "true", "yes") else "off"
    if "path" in p:
        if "host" in p or "port" in p:
            raise ConfigError(f"--chardev socket,id={chardev_id}: path= and host=/port= exclude each other")
        head = f"unix:{p['path']}"
    elif "port" in p:
        head = f"tcp:{p.get('host', '')}:{p['port']}"
    else:
        raise ConfigError(f"--chardev socket,id={chardev_id}: needs path=PATH or host=HOST,port=PORT")
    return chardev_id, f"{head},server=on,wait={wait}"


def _by_id(option: str, items: list[Any], cls: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        cfg = item if isinstance(item, cls) else cls.parse(item)
        if cfg.id in out:
            raise ConfigError(f"{option}: duplicate id {cfg.id!r}")
        out[cfg.id] = cfg
    return out
