"""Typed configuration: property declarations and the configs the command line becomes.

Everything a user writes as ``KEY=VALUE`` lists (``-M``, ``--device``, ``--drive``,
``--chardev``, ``--netdev``) is split by one parser (:func:`parse_props`), and every value is
converted by one declaration type (:class:`Property`), so ``on``/``off`` mean the same in
every option, an unknown key is always an error that lists the valid ones, and ``help``
output comes from the same declarations (Cloud Hypervisor's ``vm_config.rs`` is the model).

The configs (:class:`DriveConfig`, :class:`ChardevConfig`, :class:`NetdevConfig`,
:class:`DeviceConfig`) are what :class:`microvm.spec.MachineSpec` holds after parsing and
what plugins receive through the machine context. Plain classes with ``__slots__``:
``dataclasses`` costs start-up time.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from .errors import ConfigError

ON_OFF_AUTO = ("on", "off", "auto")
#: QEMU's ``qapi_bool_parse`` spellings
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")
#: property kinds a declaration may use
KINDS = ("str", "bool", "int", "size", "OnOffAuto", "choice")


def parse_bool(text: str, what: str) -> bool:
    """``on``/``off`` (and QEMU's other spellings) → bool; ``what`` names the key in the error."""
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{what}={text}: expected on or off")


def parse_int(text: str, what: str) -> int:
    """An integer as QEMU's property parsers read it (``strtoll`` with base 0): decimal, hex
    with ``0x``, octal with a leading ``0`` (``010`` is 8), an optional sign, leading blanks;
    no ``0o``/``0b`` prefixes or ``_`` separators, which Python's ``int(x, 0)`` would take."""
    t = str(text).lstrip(" \t\n\r\f\v").rstrip()
    digits = t[1:] if t[:1] in ("+", "-") else t
    value: int | None = None
    if digits.isascii() and digits:
        low = digits.lower()
        if low.startswith("0x") and len(low) > 2 and all(c in "0123456789abcdef" for c in low[2:]):
            value = int(low[2:], 16)
        elif low.startswith("0") and all(c in "01234567" for c in low):
            value = int(low, 8)
        elif low.isdigit() and low[0] != "0":
            value = int(low, 10)
    if value is None:
        raise ConfigError(f"{what}={text}: expected a number")
    return -value if t.startswith("-") else value


def split_props(text: str) -> list[str]:
    """Split a QEMU option list on commas; ``,,`` is a literal comma inside a value."""
    parts: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == ",":
            if text[i + 1 : i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_props(text: str, positional: str | None = None, what: str = "",
                short_flags: list[tuple[str, str, str]] | None = None) -> dict[str, str]:
    """``a,k=v,k2=v2`` → ``{positional: a, k: v, k2: v2}``.

    As QEMU's ``qemu_opts_parse``: only the first item may omit ``key=`` (it is the
    ``positional`` key, e.g. the driver or backend name), a key given twice is an error, and
    ``,,`` escapes a comma. Empty items are skipped. With ``short_flags`` (a list), QEMU's
    deprecated short-form booleans are accepted as QEMU 7.2 accepts them for ``-chardev`` and
    ``-netdev``: ``server`` is ``server=on``, ``nowait`` is ``wait=off``; each is appended
    as (as given, key, value) for the caller to warn about, as QEMU does.
    """
    label = what or repr(text)
    out: dict[str, str] = {}
    for n, p in enumerate(split_props(text)):
        if p == "":
            continue
        if "=" not in p:
            if n == 0 and positional:
                out[positional] = p
                continue
            if short_flags is not None and p not in ("help", "?"):
                key, value = (p[2:], "off") if p.startswith("no") and len(p) > 2 else (p, "on")
                if key in out:
                    raise ConfigError(f"{label}: {key} given twice")
                short_flags.append((p, key, value))
                out[key] = value
                continue
            raise ConfigError(f"{label}: {p!r} needs a value (key=value)")
        k, _, v = p.partition("=")
        if k in out:
            raise ConfigError(f"{label}: {k} given twice")
        out[k] = v
    return out


class Property(NamedTuple):
    """One declared ``KEY=VALUE`` key: of a device (``--device``), a backend (``--chardev``,
    ``--netdev``) or the machine (``-M``; :class:`MachineOption` is this same type).

    Give ``name, kind, default, help`` by position and everything after by keyword
    (``choices=``, ``required=``, ``auto_value=``, ``auto_means=``): the field order after
    ``help`` is not part of the contract.

    ``kind`` is one of :data:`KINDS`; ``choices`` lists the values of a ``choice``.
    ``required`` properties have no default. For ``OnOffAuto`` properties ``auto_value``
    says what ``auto`` resolves to (and ``auto_means`` says it in words for ``help``).
    ``plugin`` is filled in by the core with the declaring plugin's name.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    auto_means: str = ""
    plugin: str = ""
    required: bool = False
    auto_value: bool | None = None
    #: called with the converted value; raises ConfigError for a value the kind admits but
    #: the device cannot use (a date that does not parse), so the error comes at parse time
    check: Any = None

    def parse(self, text: str, owner: str = "") -> Any:
        """Convert ``text`` to this property's type (and run its ``check``); ``owner`` (e.g.
        ``virtio-blk-device``) prefixes the error."""
        value = self._convert(text, owner)
        if self.check is not None:
            self.check(value)
        return value

    def _convert(self, text: str, owner: str) -> Any:
        what = self._what(owner)
        kind = self.kind
        if kind == "str":
            return text
        if kind == "bool":
            return parse_bool(text, what)
        if kind == "int":
            return parse_int(text, what)
        if kind == "size":
            from .sizes import parse_size

            return parse_size(text, "B", name=what)
        if kind == "OnOffAuto":
            low = str(text).strip().lower()
            if low in ON_OFF_AUTO:
                return low
            raise ConfigError(f"{what}={text}: expected on, off or auto")
        if kind == "choice":
            t = str(text).strip()
            if t in self.choices:
                return t
            raise ConfigError(f"{what}={text}: expected one of {', '.join(self.choices)}")
        raise ConfigError(f"{what}: property kind {kind!r} is unknown")  # a plugin's bug

    def _what(self, owner: str) -> str:
        return f"{owner}: {self.name}" if owner else self.name

    def problem(self) -> str | None:
        """What is wrong with this declaration (a plugin's bug), or None: checked when it
        is registered, so a user never meets a malformed one."""
        if not isinstance(self.name, str) or not self.name:
            return f"property name must be a non-empty string, got {self.name!r}"
        if self.kind not in KINDS:
            return f"property {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}"
        if self.kind == "choice":
            if not self.choices or not all(isinstance(c, str) for c in self.choices):
                return f"property {self.name!r}: a choice needs choices (strings)"
            if self.default is not None and self.default not in self.choices:
                return f"property {self.name!r}: default {self.default!r} is not one of its choices"
        if self.kind == "OnOffAuto" and self.default not in ON_OFF_AUTO + (None,):
            return f"property {self.name!r}: an OnOffAuto default is on, off or auto"
        if not isinstance(self.help, str) or not isinstance(self.auto_means, str):
            return f"property {self.name!r}: help and auto_means are strings (fields after help go by keyword)"
        if not isinstance(self.required, bool) or self.auto_value not in (None, True, False):
            return f"property {self.name!r}: required and auto_value are booleans"
        if self.check is not None and not callable(self.check):
            return f"property {self.name!r}: check is a callable"
        return None

    def resolve(self, value: Any) -> Any:
        """``auto`` → this property's ``auto_value``; anything else unchanged."""
        if self.kind == "OnOffAuto" and value in ON_OFF_AUTO:
            return self.auto_value if value == "auto" else value == "on"
        return value

    def describe(self) -> str:
        """One line for ``help`` output: ``name=<kind> (default ...) - help``."""
        kind = "|".join(self.choices) if self.kind == "choice" else "on|off|auto" if self.kind == "OnOffAuto" else self.kind
        if self.required:
            dflt = "required"
        else:
            dflt = f"default {format_value(self.default)}"
            if self.auto_means:
                dflt += f"; auto means {self.auto_means}"
        return f"{self.name}=<{kind}> ({dflt})" + (f" - {self.help}" if self.help else "")


class MachineOption(Property):
    """A ``-M microvm,KEY=VALUE`` option: a property of the machine, declared by a plugin
    through ``register_machine_options``. Errors read ``machine option KEY=VALUE: ...``;
    string values are taken without surrounding blanks."""

    __slots__ = ()

    def _what(self, owner: str) -> str:
        return f"machine option {self.name}"

    def parse(self, text: str, owner: str = "") -> Any:
        return super().parse(text.strip() if self.kind == "str" else text, owner)


def format_value(value: Any) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value is None:
        return "none"
    return str(value)


class Properties(Mapping[str, Any]):
    """Parsed property values, by name and as attributes (``props.drive`` or
    ``props["drive"]``; names with dashes only by key). Every declared property is present,
    with its default when the user did not give it; ``given`` says which the user gave."""

    __slots__ = ("_values", "given", "owner")

    def __init__(self, values: dict[str, Any], given: Iterable[str] = (), owner: str = "") -> None:
        self._values = values
        self.given = frozenset(given)
        self.owner = owner

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self.owner or 'properties'} has no property {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Properties({self._values!r})"


def parse_properties(owner: str, declared: Iterable[Property], given: Mapping[str, str]) -> Properties:
    """Check ``given`` (raw ``key: text``) against ``declared`` and convert each value.

    An unknown key is a one-line :class:`ConfigError` listing the valid keys; a missing
    required one names it.
    """
    decl = {p.name: p for p in declared}
    unknown = [k for k in given if k not in decl]
    if unknown:
        valid = ", ".join(sorted(decl)) or "none"
        noun = "property" if len(unknown) == 1 else "properties"
        raise ConfigError(f"{owner}: unknown {noun} {', '.join(unknown)} (valid: {valid})")
    values: dict[str, Any] = {}
    for name, p in decl.items():
        if name in given:
            values[name] = p.parse(given[name], owner)
        elif p.required:
            raise ConfigError(f"{owner}: {name}=... is required ({p.help})" if p.help else f"{owner}: {name}=... is required")
        else:
            values[name] = p.default
    return Properties(values, given.keys(), owner)


def describe_properties(declared: Iterable[Property]) -> list[str]:
    """``help`` lines for a set of declared properties, sorted by name."""
    return [p.describe() for p in sorted(declared, key=lambda p: p.name)]


# ---- the configs the command line becomes ------------------------------------------------
class DriveConfig:
    """``--drive id=ID,file=PATH[,format=raw][,if=none][,readonly=on|off]`` (QEMU's -drive).

    microvm's block devices are virtio-mmio, so ``if=none`` is the only interface and raw
    the only format, as for any QEMU microvm guest without PCI.
    """

    __slots__ = ("id", "file", "format", "interface", "readonly")
    FORMATS = ("raw",)
    PROPERTIES: tuple[Property, ...] = (
        Property("id", "str", required=True, help="the name a device's drive= refers to"),
        Property("file", "str", required=True, help="the disk image (a raw file or block device)"),
        Property("format", "str", "raw", "image format: raw"),
        Property("if", "str", "none", "interface: none (a -device virtio-blk-device uses the drive)"),
        Property("readonly", "bool", False, "open the image read-only"),
    )

    def __init__(self, id: str, file: str, format: str = "raw", interface: str = "none", readonly: bool = False) -> None:
        self.id = id
        self.file = file
        self.format = format
        self.interface = interface
        self.readonly = readonly

    @classmethod
    def parse(cls, text: str) -> "DriveConfig":
        p = parse_properties("--drive", cls.PROPERTIES, parse_props(text, what="--drive"))
        if not p.id:
            raise ConfigError("--drive: id=... must not be empty")
        if not p.file:
            raise ConfigError(f"--drive id={p.id}: file=... must not be empty")
        if p.format not in cls.FORMATS:
            raise ConfigError(f"drive {p.id}: format={p.format} is not supported (supported formats: {', '.join(cls.FORMATS)})")
        if p["if"] != "none":
            raise ConfigError(f"drive {p.id}: if={p['if']} is not supported on microvm; use if=none with -device virtio-blk-device")
        return cls(p.id, p.file, p.format, p["if"], p.readonly)

    def __repr__(self) -> str:
        return f"DriveConfig(id={self.id!r}, file={self.file!r}, format={self.format!r}, readonly={self.readonly})"


class BackendConfig:
    """A host backend from the command line: ``--chardev BACKEND,id=ID,...`` or
    ``--netdev TYPE,id=ID,...``. ``props`` stays raw text here; the backend type (declared
    by a plugin with its properties) converts it when the machine creates the backend."""

    __slots__ = ("kind", "backend", "id", "props", "text", "short_flags")
    option = "--backend"

    def __init__(self, backend: str, id: str, props: Mapping[str, str] | None = None) -> None:
        self.backend = backend
        self.id = id
        self.props: dict[str, str] = dict(props or {})
        self.text = ""
        #: QEMU's deprecated short-form booleans found (``server``, ``nowait``): (as given,
        #: key, value), for the command line to warn about as QEMU does
        self.short_flags: list[tuple[str, str, str]] = []

    @classmethod
    def parse(cls, text: str) -> "BackendConfig":
        flags: list[tuple[str, str, str]] = []
        props = parse_props(text, positional="backend", what=cls.option, short_flags=flags)
        backend = props.pop("backend", "")
        ident = props.pop("id", "")
        if not backend:
            raise ConfigError(f"{cls.option} {text!r}: the backend type comes first (e.g. {cls.example})")
        if not ident:
            raise ConfigError(f"{cls.option} {backend}: id=... is required")
        cfg = cls(backend, ident, props)
        cfg.text = text
        cfg.short_flags = flags
        return cfg

    example = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r}, id={self.id!r}, props={self.props!r})"


class ChardevConfig(BackendConfig):
    """``--chardev BACKEND,id=ID,...`` (QEMU's -chardev)."""

    __slots__ = ()
    option = "--chardev"
    example = "stdio,id=c0"


class NetdevConfig(BackendConfig):
    """``--netdev TYPE,id=ID,...`` (QEMU's -netdev)."""

    __slots__ = ()
    option = "--netdev"
    example = "tap,id=n0"


class DeviceConfig:
    """``--device DRIVER,prop=value,...`` (QEMU's -device): the driver name and the raw
    properties, converted by the device type's declaration when the machine is built.
    ``--device help`` and ``--device DRIVER,help`` (QEMU's spellings) set ``help``."""

    __slots__ = ("driver", "props", "text", "help")

    def __init__(self, driver: str, props: Mapping[str, str] | None = None, text: str = "", help: bool = False) -> None:
        self.driver = driver
        self.props: dict[str, str] = dict(props or {})
        self.text = text
        self.help = help

    @classmethod
    def parse(cls, text: str) -> "DeviceConfig":
        parts = split_props(text)
        if parts[0] == "help" or "help" in parts[1:] or "?" in parts[1:]:
            return cls("" if parts[0] == "help" else parts[0], {}, text, help=True)
        props = parse_props(text, positional="driver", what="--device")
        driver = props.pop("driver", None) or props.pop("type", None) or ""
        if not driver:
            raise ConfigError(f"--device {text!r}: the device type comes first (e.g. virtio-blk-device,drive=d0)")
        return cls(driver, props, text)

    def __repr__(self) -> str:
        return f"DeviceConfig({self.driver!r}, {self.props!r})"


class SerialConfig:
    """One ``--serial`` value (QEMU's ``-serial``): ``none`` (no port), a reference to a
    ``--chardev`` (``chardev:ID``), or a shorthand for a chardev of its own, with the id
    ``serialN`` (as QEMU names them):

    ========================================  ===============================================
    ``stdio``                                 ``stdio`` (Ctrl-C ends the VMM, QEMU's default)
    ``mon:stdio``                             ``stdio,mux=on,signal=off`` (``-nographic``'s,
                                              microvm's default: Ctrl-C goes to the guest)
    ``null``, ``pty``                         ``null``, ``pty``
    ``file:PATH``, ``pipe:PATH``              ``file,path=PATH``, ``pipe,path=PATH``
    ``unix:PATH[,server=on][,wait=off]``      ``socket,path=PATH,...``
    ``tcp:[HOST]:PORT[,server=on][,wait=off]``  ``socket,host=HOST,port=PORT,...``
    ========================================  ===============================================

    The socket forms also take ``reconnect=N`` and ``nodelay=on``, and QEMU's older flags
    ``server``, ``nowait`` and ``nodelay`` without a value; ``mon:`` in front of any of
    them sets ``mux=on``.
    """

    __slots__ = ("text", "chardev", "ref")

    #: what the socket shorthands accept after the address
    SOCKET_OPTIONS = ("server", "wait", "reconnect", "nodelay")
    _FLAGS = {"server": ("server", "on"), "nowait": ("wait", "off"), "nodelay": ("nodelay", "on"),
              "wait": ("wait", "on"), "noserver": ("server", "off")}

    def __init__(self, text: str, chardev: ChardevConfig | None, ref: str | None = None) -> None:
        self.text = text
        self.chardev = chardev
        self.ref = ref

    @classmethod
    def parse(cls, text: str, index: int) -> "SerialConfig":
        ident = f"serial{index}"
        spec = text
        mux = spec.startswith("mon:")
        if mux:
            spec = spec[4:]
        if spec == "none" and not mux:
            return cls(text, None)
        if spec.startswith("chardev:") and not mux:
            if not spec[8:]:
                raise ConfigError("--serial chardev: needs an id (chardev:ID)")
            return cls(text, None, ref=spec[8:])
        backend, props = cls._shorthand(spec, text)
        if mux:
            props["mux"] = "on"
            if backend == "stdio":
                props["signal"] = "off"  # QEMU: a monitor muxed on stdio passes Ctrl-C to the guest
        return cls(text, ChardevConfig(backend, ident, props))

    @classmethod
    def _shorthand(cls, spec: str, text: str) -> tuple[str, dict[str, str]]:
        if spec in ("stdio", "null", "pty"):
            return spec, {}
        for prefix, backend in (("file:", "file"), ("pipe:", "pipe")):
            if spec.startswith(prefix):
                if not spec[len(prefix):]:
                    raise ConfigError(f"--serial {text}: needs a path ({prefix}PATH)")
                return backend, {"path": spec[len(prefix):]}
        if spec.startswith("unix:") or spec.startswith("tcp:"):
            kind, _, rest = spec.partition(":")
            parts = split_props(rest)
            addr, opts = parts[0], parts[1:]
            props: dict[str, str] = {}
            if kind == "unix":
                if not addr:
                    raise ConfigError(f"--serial {text}: needs a path (unix:PATH)")
                props["path"] = addr
            else:
                host, sep, port = addr.rpartition(":")
                if not sep or not port:
                    raise ConfigError(f"--serial {text}: expected tcp:HOST:PORT (HOST may be empty)")
                if host.startswith("[") and host.endswith("]"):
                    host = host[1:-1]
                props["host"], props["port"] = host, port
            for opt in opts:
                if not opt:
                    continue
                key, eq, value = opt.partition("=")
                if not eq:
                    if opt not in cls._FLAGS:
                        raise ConfigError(f"--serial {text}: unknown option {opt!r} "
                                          f"(valid: {', '.join(cls.SOCKET_OPTIONS)})")
                    key, value = cls._FLAGS[opt]
                elif key not in cls.SOCKET_OPTIONS:
                    raise ConfigError(f"--serial {text}: unknown option {key!r} (valid: {', '.join(cls.SOCKET_OPTIONS)})")
                if key in props:
                    raise ConfigError(f"--serial {text}: {key} given twice")
                props[key] = value
            return "socket", props
        raise ConfigError(f"--serial {text}: expected stdio, mon:stdio, null, none, pty, file:PATH, pipe:PATH, "
                          "unix:PATH[,server=on][,wait=off], tcp:HOST:PORT[,server=on][,wait=off] or chardev:ID")

    @property
    def present(self) -> bool:
        return self.chardev is not None or self.ref is not None

    def __repr__(self) -> str:
        return f"SerialConfig({self.text!r})"


class VirtioTransportConfig(NamedTuple):
    """How a virtio device sits on its virtio-mmio transport.

    ``legacy``: the Version 1 register layout (virtio 1.2 §4.2.4), QEMU 7.2's default for
    virtio-mmio (``-global virtio-mmio.force-legacy=false`` turns it off there; here it is
    the per-device ``force-legacy=off``).
    """

    legacy: bool = True


#: Properties the core adds to every virtio device type (they belong to the transport).
VIRTIO_TRANSPORT_PROPERTIES: tuple[Property, ...] = (
    Property("force-legacy", "bool", True, "legacy (Version 1) virtio-mmio register layout, QEMU 7.2's default"),
)


class LegacyDevices(NamedTuple):
    """Which of QEMU microvm's optional legacy devices the machine options ask for, resolved
    once by the core (``auto`` made concrete; an option no installed plugin declares means
    the device is absent). Whether the irqchip emulates one of them itself is the irqchip's
    :attr:`~microvm.irq.IrqChip.builtin`."""

    pic: bool = False
    pit: bool = False
    rtc: bool = False
    isa_serial: bool = False


#: QEMU microvm's machine properties for the legacy devices (``hw/i386/microvm.c``)
LEGACY_OPTIONS: dict[str, str] = {"pic": "pic", "pit": "pit", "rtc": "rtc", "isa_serial": "isa-serial"}


class BootConfig:
    """How this boot starts, for the plugins that hand a kernel to a firmware (fw_cfg):
    ``ctx.boot``. Plain attributes, read-only by convention; the core sets them.

    ``firmware``: the ``-bios`` image's path, None for a direct kernel boot (the VMM loads
    the kernel and starts it itself). ``kernel``/``initrd``: the files' bytes (``kernel``
    is None without ``--kernel``); ``kernel_kind``: ``"bzimage"``, ``"elf"`` or None.
    ``append``: the user's command line. ``cmdline``: the whole command line the kernel
    gets (the user's words, then the ``kernel_cmdline`` hooks'), None until the kernel is
    loaded, i.e. final from ``machine_start`` on. ``pvh``: ``(entry, lowest, highest
    loaded address)`` of an ELF kernel, which the core loads into RAM itself for a firmware
    boot too (QEMU does the same). ``below_4g``: RAM bytes below 4 GiB. ``fw_cfg_files``:
    the user's ``--fw-cfg`` files (QEMU's ``-fw_cfg``), (name, bytes) in order, for the
    plugin that provides the fw_cfg device to take (:meth:`take_fw_cfg_files`).
    """

    __slots__ = ("firmware", "kernel", "initrd", "kernel_kind", "append", "cmdline", "pvh", "below_4g", "_handler",
                 "fw_cfg_files", "_fw_cfg_taker")

    def __init__(self, firmware: str | None = None, kernel: bytes | None = None, initrd: bytes | None = None,
                 kernel_kind: str | None = None, append: str = "", pvh: tuple[int, int, int] | None = None,
                 below_4g: int = 0, fw_cfg_files: "list[tuple[str, bytes]] | None" = None) -> None:
        self.firmware = firmware
        self.kernel = kernel
        self.initrd = initrd
        self.kernel_kind = kernel_kind
        self.append = append
        self.cmdline: str | None = None
        self.pvh = pvh
        self.below_4g = below_4g
        self._handler: str | None = None
        self.fw_cfg_files = list(fw_cfg_files or [])
        self._fw_cfg_taker: str | None = None

    @property
    def handled_by(self) -> str | None:
        """Who hands the kernel to the firmware (see :meth:`hand_over`), or None."""
        return self._handler

    def hand_over(self, plugin: str) -> None:
        """A plugin declares that it passes kernel, initrd and command line to the firmware
        (fw_cfg does). A firmware boot with ``--kernel`` and nobody to do this is refused:
        the firmware could not find the kernel."""
        self._handler = plugin

    def take_fw_cfg_files(self, plugin: str) -> "list[tuple[str, bytes]]":
        """The user's ``--fw-cfg`` files, for the plugin whose fw_cfg device publishes them
        (fw_cfg does). Files that no plugin takes are refused, as QEMU refuses ``-fw_cfg``
        without a fw_cfg device."""
        self._fw_cfg_taker = plugin
        return list(self.fw_cfg_files)

    @property
    def fw_cfg_files_taken_by(self) -> str | None:
        """The plugin that took the ``--fw-cfg`` files (:meth:`take_fw_cfg_files`), or None."""
        return self._fw_cfg_taker

    def __repr__(self) -> str:
        return (f"BootConfig(firmware={self.firmware!r}, kernel_kind={self.kernel_kind!r}, "
                f"cmdline={self.cmdline!r})")
