"""What the user asked for: the machine description the command line (or an embedding
program) produces and :class:`microvm.machine.Machine` builds from."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError

MAX_SMP = 255
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, default_unit: str = "M") -> int:
    """QEMU's ``-m`` syntax: a number with an optional K/M/G/T suffix (``B``/``iB`` may
    follow), MiB when bare. Parsed by hand: ``re`` costs start-up time."""
    t = str(text).strip()
    for tail in ("iB", "ib", "B", "b"):
        if t.endswith(tail) and len(t) > len(tail) and t[-len(tail) - 1].upper() in _UNITS:
            t = t[: -len(tail)]
            break
    unit = default_unit
    if t and t[-1].upper() in _UNITS:
        unit, t = t[-1].upper(), t[:-1].rstrip()
    whole, dot, frac = t.partition(".")
    if not (t.isascii() and whole.isdigit() and (not dot or frac.isdigit())):
        raise ConfigError(f"invalid size {text!r}: expected a number with an optional K, M, G or T suffix")
    return int(float(t) * _UNITS[unit])


def parse_props(text: str, positional: str | None = None) -> dict[str, str]:
    """``a,k=v,k2=v2`` → ``{positional: a, k: v, k2: v2}`` (``,,`` escapes a comma in a value)."""
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1 : i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    out: dict[str, str] = {}
    for n, p in enumerate(parts):
        if p == "":
            continue
        if "=" not in p:
            if n == 0 and positional:
                out[positional] = p
                continue
            raise ConfigError(f"{text!r}: {p!r} needs a value (key=value)")
        k, _, v = p.partition("=")
        if k in out:
            raise ConfigError(f"{text!r}: {k} given twice")
        out[k] = v
    return out


class MachineSpec:
    """The machine to build (plain class: ``dataclasses`` costs start-up time)."""

    def __init__(
        self,
        kernel: str | None = None,
        initrd: str | None = None,
        append: str = "",
        mem_size: int = 128 << 20,        # QEMU's default -m
        smp: int = 1,
        no_reboot: bool = False,
        machine: list[str] | None = None,    # raw -M strings
        devices: list[str] | None = None,    # raw --device strings
        drives: list[str] | None = None,
        chardevs: list[str] | None = None,
        netdevs: list[str] | None = None,
        serial: list[str] | None = None,
        extra_plugins: list[Any] | None = None,
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
        self.serial = list(serial) if serial is not None else ["stdio"]
        self.extra_plugins = list(extra_plugins or [])

    def __repr__(self) -> str:
        return f"MachineSpec({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def validate(self) -> None:
        if self.mem_size <= 0:
            raise ConfigError("-m: guest memory must be larger than 0")
        if self.mem_size < 2 << 20:
            raise ConfigError(f"-m {self.mem_size}: at least 2 MiB of guest memory are needed")
        if self.mem_size & 0xFFF:
            raise ConfigError("-m: guest memory must be a multiple of 4 KiB")
        if not 1 <= self.smp <= MAX_SMP:
            raise ConfigError(f"--smp {self.smp}: the number of vCPUs must be between 1 and {MAX_SMP}")

    def parsed(self, kind: str) -> dict[str, dict[str, str]]:
        """``drives``/``chardevs``/``netdevs`` as ``{id: props}``."""
        raw = {"drive": self.drives, "chardev": self.chardevs, "netdev": self.netdevs}[kind]
        out: dict[str, dict[str, str]] = {}
        for text in raw:
            props = parse_props(text, positional="backend" if kind != "drive" else None)
            ident = props.get("id")
            if not ident:
                raise ConfigError(f"--{kind} {text!r}: id=... is required")
            if ident in out:
                raise ConfigError(f"--{kind}: duplicate id {ident!r}")
            out[ident] = props
        return out
