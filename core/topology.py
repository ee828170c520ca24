"""vCPU topology: QEMU's ``-smp`` (sockets, cores, threads) and the APIC IDs it implies.

Why here and why QEMU's rules: a user moving ``-smp 4,sockets=2`` from QEMU must get the same
machine, and Linux derives its topology from the APIC IDs (CPUID leaf 0xB gives the bit
widths of each level), so the IDs must be laid out as QEMU lays them out
(``include/hw/i386/topology.h``): thread, core and package fields, each as wide as the count
below it needs, so a count that is not a power of two leaves holes in the IDs.

Parsing follows QEMU 7.2's ``machine_parse_smp_config`` for a machine without dies and
clusters (microvm): omitted counts are computed preferring cores over sockets, the product
must equal ``maxcpus``, and numbers are read as C's ``strtoll(.., 0)`` reads them (``0x10``,
``010``). Without ``re`` (start-up time).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from .errors import ConfigError

#: microvm's limit: APIC IDs fit the MP table's 8-bit field
MAX_CPUS = 255
_KEYS = ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus")


class CpuTopology(NamedTuple):
    """``cpus`` vCPUs present at boot out of ``maxcpus`` = sockets * cores * threads."""

    cpus: int = 1
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    maxcpus: int = 1

    @classmethod
    def flat(cls, cpus: int) -> "CpuTopology":
        """``-smp N``: one package of N single-thread cores (QEMU's default since 6.2)."""
        return cls(cpus, 1, cpus, 1, cpus)

    @property
    def thread_bits(self) -> int:
        return _bits(self.threads)

    @property
    def core_bits(self) -> int:
        return _bits(self.cores)

    @property
    def pkg_shift(self) -> int:
        """Bit offset of the package ID in an APIC ID (QEMU's ``apicid_pkg_offset``)."""
        return self.thread_bits + self.core_bits

    def apic_id(self, index: int) -> int:
        """APIC ID of vCPU ``index`` (QEMU's ``x86_apicid_from_cpu_idx``)."""
        thread = index % self.threads
        core = index // self.threads % self.cores
        pkg = index // (self.threads * self.cores)
        return (pkg << self.pkg_shift) | (core << self.thread_bits) | thread

    def apic_ids(self) -> list[int]:
        return [self.apic_id(i) for i in range(self.cpus)]

    def describe(self) -> str:
        return f"sockets ({self.sockets}) * cores ({self.cores}) * threads ({self.threads})"


def _bits(count: int) -> int:
    """Bits needed for ``count`` IDs (QEMU's ``apicid_bitwidth_for_count``)."""
    return max(count - 1, 0).bit_length()


def c_integer(text: str) -> int | None:
    """``text`` as C's ``strtoll(text, &end, 0)`` with nothing after the number: leading
    blanks and a sign allowed, ``0x`` hex, a leading ``0`` octal. None when it is not one."""
    t = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if t[:1] in ("+", "-"):
        sign = -1 if t[0] == "-" else 1
        t = t[1:]
    if not t or not t.isascii():
        return None
    base = 10
    if t[:2].lower() == "0x" and len(t) > 2:
        base, t = 16, t[2:]
    elif t[0] == "0" and len(t) > 1:
        base, t = 8, t[1:]
    try:
        return sign * int(t, base) if t.isalnum() else None
    except ValueError:
        return None


def parse_smp(text: str, max_cpus: int = MAX_CPUS, warn: Callable[[str], None] | None = None) -> CpuTopology:
    """QEMU's ``-smp [cpus=]N[,sockets=S][,dies=1][,clusters=1][,cores=C][,threads=T][,maxcpus=M]``.

    As QEMU's option parser, a key given twice takes the last value and only the first item
    may omit its key. Errors are QEMU's, in one line.
    """
    given: dict[str, int] = {}
    text = str(text)
    for n, item in enumerate(text.split(",")):
        if item == "" and n == 0:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            if n != 0:
                raise ConfigError(f"-smp {text}: Invalid parameter '{item}'")
            key, value = "cpus", item
        if key not in _KEYS:
            raise ConfigError(f"-smp {text}: Parameter 'smp.{key}' is unexpected")
        number = c_integer(value)
        if number is None:
            raise ConfigError(f"-smp {text}: Parameter 'smp.{key}' expects integer")
        given[key] = number
    negative = [v for v in given.values() if v < 0]
    if negative:  # QEMU reads them as huge unsigned counts
        raise ConfigError(f"-smp {text}: Invalid SMP CPUs {negative[0]}. "
                          f"The max CPUs supported by machine 'microvm' is {max_cpus}")
    if warn is not None and any(v == 0 for v in given.values()):
        warn("Deprecated CPU topology (considered invalid): CPU topology parameters must be greater than zero")
    for level in ("dies", "clusters"):
        if given.get(level, 0) > 1:
            raise ConfigError(f"-smp {text}: {level} not supported by this machine's CPU topology")
    # QEMU warns about explicit zeros and treats them as omitted
    cpus, sockets, cores, threads, maxcpus = (given.get(k, 0) for k in ("cpus", "sockets", "cores", "threads", "maxcpus"))
    if cpus == 0 and maxcpus == 0:
        sockets, cores, threads = sockets or 1, cores or 1, threads or 1
    else:
        maxcpus = maxcpus or cpus
        if cores == 0:  # prefer cores over sockets (QEMU >= 6.2)
            sockets, threads = sockets or 1, threads or 1
            cores = maxcpus // (sockets * threads)
        elif sockets == 0:
            threads = threads or 1
            sockets = maxcpus // (cores * threads)
        if threads == 0:
            threads = maxcpus // (sockets * cores) if sockets * cores else 0
    maxcpus = maxcpus or sockets * cores * threads
    cpus = cpus or maxcpus
    topo = CpuTopology(cpus, sockets, cores, threads, maxcpus)
    if sockets * cores * threads != maxcpus:
        raise ConfigError(f"-smp {text}: Invalid CPU topology: product of the hierarchy must match maxcpus: "
                          f"{topo.describe()} != maxcpus ({maxcpus})")
    if maxcpus < cpus:
        raise ConfigError(f"-smp {text}: Invalid CPU topology: maxcpus must be equal to or greater than smp: "
                          f"{topo.describe()} == maxcpus ({maxcpus}) < smp_cpus ({cpus})")
    if maxcpus > max_cpus:
        raise ConfigError(f"-smp {text}: Invalid SMP CPUs {maxcpus}. The max CPUs supported by machine 'microvm' is {max_cpus}")
    if topo.apic_id(maxcpus - 1) > max_cpus - 1:
        raise ConfigError(f"-smp {text}: the topology needs APIC IDs up to {topo.apic_id(maxcpus - 1)}; "
                          f"microvm's MP table holds IDs up to {max_cpus - 1}")
    return topo
