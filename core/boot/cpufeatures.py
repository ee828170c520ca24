"""``-cpu host[,+feature][,-feature][,feature=on|off]``: the CPU models and the CPUID feature
flags microvm understands, by QEMU's names.

microvm has one CPU model, ``host`` (``max`` is the same under KVM, as in QEMU): the guest
sees the CPUID KVM supports on this host. Feature flags turn single CPUID bits on or off on
top of that, applied after every plugin's ``cpuid`` hook so the user has the last word;
a flag KVM cannot offer is left off with a warning, as QEMU's "host doesn't support
requested feature". Bit positions: Intel SDM vol. 2 (CPUID), AMD APM vol. 3 (appendix E),
Linux ``Documentation/virt/kvm/x86/cpuid.rst`` for the KVM leaf; the names are QEMU's
(``target/i386/cpu.c``, ``feature_word_info``).
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import ConfigError

#: the CPU models ``-cpu`` accepts, with ``-cpu help``'s description
MODELS = {
    "host": "processor with all supported host features",
    "max": "Enables all features supported by the accelerator in the current host",
}

_LEAF1_ECX = (1, 0, "ecx")
_LEAF1_EDX = (1, 0, "edx")
_LEAF7_EBX = (7, 0, "ebx")
_LEAF7_ECX = (7, 0, "ecx")
_LEAF7_EDX = (7, 0, "edx")
_XSAVE1_EAX = (0xD, 1, "eax")
_EXT1_ECX = (0x80000001, 0, "ecx")
_EXT1_EDX = (0x80000001, 0, "edx")
_EXT8_EBX = (0x80000008, 0, "ebx")
_KVM_EAX = (0x40000001, 0, "eax")


def _bits(word: tuple[int, int, str], names: str) -> dict[str, tuple[int, int, str, int]]:
    """``"0:pni,sse3 1:pclmulqdq"`` → {name: (leaf, subleaf, register, bit)}."""
    out = {}
    for item in names.split():
        bit, _, aliases = item.partition(":")
        for name in aliases.split(","):
            out[name] = (*word, int(bit))
    return out


#: QEMU's feature name → (leaf, subleaf, register, bit)
FEATURES: dict[str, tuple[int, int, str, int]] = {
    **_bits(_LEAF1_ECX, "0:pni,sse3 1:pclmulqdq 2:dtes64 3:monitor 4:ds-cpl 5:vmx 6:smx 7:est 8:tm2 9:ssse3 "
                        "10:cid 12:fma 13:cx16 14:xtpr 15:pdcm 17:pcid 18:dca 19:sse4.1,sse4-1,sse4_1 "
                        "20:sse4.2,sse4-2,sse4_2 21:x2apic 22:movbe 23:popcnt 24:tsc-deadline 25:aes 26:xsave "
                        "28:avx 29:f16c 30:rdrand 31:hypervisor"),
    **_bits(_LEAF1_EDX, "0:fpu 1:vme 2:de 3:pse 4:tsc 5:msr 6:pae 7:mce 8:cx8 9:apic 11:sep 12:mtrr 13:pge "
                        "14:mca 15:cmov 16:pat 17:pse36 18:pn 19:clflush 21:ds 22:acpi 23:mmx 24:fxsr 25:sse "
                        "26:sse2 27:ss 28:ht 29:tm 30:ia64 31:pbe"),
    **_bits(_LEAF7_EBX, "0:fsgsbase 1:tsc-adjust 2:sgx 3:bmi1 4:hle 5:avx2 7:smep 8:bmi2 9:erms 10:invpcid "
                        "11:rtm 14:mpx 16:avx512f 17:avx512dq 18:rdseed 19:adx 20:smap 21:avx512ifma "
                        "23:clflushopt 24:clwb 26:avx512pf 27:avx512er 28:avx512cd 29:sha-ni 30:avx512bw "
                        "31:avx512vl"),
    **_bits(_LEAF7_ECX, "1:avx512vbmi 2:umip 3:pku 5:waitpkg 6:avx512vbmi2 8:gfni 9:vaes 10:vpclmulqdq "
                        "11:avx512vnni 12:avx512bitalg 14:avx512-vpopcntdq 16:la57 22:rdpid 25:cldemote "
                        "27:movdiri 28:movdir64b"),
    **_bits(_LEAF7_EDX, "2:avx512-4vnniw 3:avx512-4fmaps 4:fsrm 10:md-clear 14:serialize 16:tsx-ldtrk "
                        "18:pconfig 19:arch-lbr 22:amx-bf16 23:avx512-fp16 24:amx-tile 25:amx-int8 "
                        "26:spec-ctrl 27:stibp 28:flush-l1d 29:arch-capabilities 30:core-capability 31:ssbd"),
    **_bits(_XSAVE1_EAX, "0:xsaveopt 1:xsavec 2:xgetbv1 3:xsaves"),
    **_bits(_EXT1_ECX, "0:lahf-lm,lahf_lm 1:cmp-legacy,cmp_legacy 2:svm 3:extapic 4:cr8legacy 5:abm 6:sse4a "
                       "7:misalignsse 8:3dnowprefetch 9:osvw 10:ibs 11:xop 12:skinit 13:wdt 15:lwp 16:fma4 "
                       "17:tce 19:nodeid-msr 21:tbm 22:topoext 23:perfctr-core 24:perfctr-nb"),
    **_bits(_EXT1_EDX, "11:syscall 20:nx,xd 22:mmxext 25:fxsr-opt 26:pdpe1gb 27:rdtscp 29:lm,i64 "
                       "30:3dnowext 31:3dnow"),
    **_bits(_EXT8_EBX, "9:wbnoinvd 12:ibpb 15:amd-stibp 24:amd-ssbd 25:virt-ssbd 26:amd-no-ssb"),
    **_bits(_KVM_EAX, "0:kvmclock 1:kvm-nopiodelay 2:kvm-mmu 4:kvm-asyncpf 5:kvm-steal-time 6:kvm-pv-eoi "
                      "7:kvm-pv-unhalt 9:kvm-pv-tlb-flush 10:kvm-asyncpf-vmexit 11:kvm-pv-ipi "
                      "12:kvm-poll-control 13:kvm-pv-sched-yield 14:kvm-asyncpf-int 15:kvm-msi-ext-dest-id "
                      "24:kvmclock-stable-bit"),
}


def parse_cpu(text: str) -> tuple[str, dict[str, bool]]:
    """``host,-arch-capabilities,+x2apic,pcid=off`` → (``host``, {feature: on}); the last
    setting of a feature wins. Raises :class:`ConfigError` in QEMU's words."""
    model, *items = str(text).split(",")
    if model not in MODELS:
        raise ConfigError(f"unable to find CPU model '{model}' (microvm offers {' and '.join(MODELS)}; "
                          f"-cpu help lists them)")
    features: dict[str, bool] = {}
    for item in items:
        if item == "":
            continue
        if item[0] in "+-":
            name, on = item[1:], item[0] == "+"
        else:
            name, eq, value = item.partition("=")
            low = value.lower() if eq else "on"
            if low in ("on", "true", "yes"):
                on = True
            elif low in ("off", "false", "no"):
                on = False
            else:
                raise ConfigError(f"-cpu {text}: Parameter '{name}' expects 'on' or 'off'")
        if name not in FEATURES:
            raise ConfigError(f"-cpu {text}: unknown CPU feature '{name}' (-cpu help lists the known ones)")
        features[name] = on
    return model, features


def apply_features(entries: list[dict[str, int]], features: dict[str, bool],
                   supported: Iterable[dict[str, int]], warn: Any = None) -> list[dict[str, int]]:
    """Set or clear the requested bits in ``entries`` (in place; returned for convenience).
    A bit KVM does not support (absent from ``supported``) is not set: ``warn(msg)`` says so."""
    sup = {(e["function"], e["index"]): e for e in supported}
    by_leaf = {(e["function"], e["index"]): e for e in entries}
    for name, on in features.items():
        leaf, sub, reg, bit = FEATURES[name]
        e = by_leaf.get((leaf, sub))
        if on:
            s = sup.get((leaf, sub))
            if e is None or s is None or not (s[reg] >> bit) & 1:
                if warn is not None:
                    warn(f"host doesn't support requested feature: CPUID.{leaf:02X}H:{reg.upper()}.{name} [bit {bit}]")
                continue
            e[reg] |= 1 << bit
        elif e is not None:
            e[reg] &= ~(1 << bit)
    return entries


def help_text() -> str:
    """``-cpu help``: the models, then the feature names (QEMU's layout)."""
    lines = ["Available CPUs:"]
    lines += [f"x86 {name:<22}{desc}" for name, desc in MODELS.items()]
    lines += ["", "Recognized CPUID flags:"]
    row = " "
    for name in sorted(FEATURES):
        if len(row) + len(name) + 1 > 76:
            lines.append(row)
            row = " "
        row += " " + name
    lines.append(row)
    return "\n".join(lines) + "\n"
