"""Machine options (``-M microvm,key=value,...``) declared by plugins.

A plugin declares each option it understands with :class:`MachineOption` (a
:class:`microvm.config.Property`); the command line is parsed against the declared set only,
so an option whose plugin is not installed does not exist and an unknown key is an error
listing the known ones, as QEMU does.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from .config import ON_OFF_AUTO, LEGACY_OPTIONS, LegacyDevices, MachineOption, Property
from .errors import ConfigError, PluginError

__all__ = ["ON_OFF_AUTO", "MachineOption", "OptionRegistry", "GENERIC_MACHINE_OPTIONS", "qemu_opts",
           "split_boot_opts"]

#: QEMU's generic machine properties that name what ``-kernel``, ``-initrd``, ``-append`` and
#: ``-bios`` set: in QEMU 7.2 those options *are* these properties (``softmmu/vl.c`` puts
#: them into the machine's option dict, where a later ``-M kernel=`` replaces an earlier
#: ``-kernel`` and the other way round). Property → run option (``dest``).
BOOT_KEYS: dict[str, str] = {"kernel": "kernel", "initrd": "initrd", "append": "append", "firmware": "bios"}
#: microvm's machine options that QEMU's microvm honours only with ACPI
#: (``hw/i386/microvm.c``: ``microvm_ioapics``, the PCIe host and XHCI are created only when
#: ``x86_machine_is_acpi_enabled``): with ``acpi=off`` QEMU accepts ``on`` and says nothing.
ACPI_ONLY: dict[str, str] = {"pcie": "PCIe", "ioapic2": "a second IOAPIC", "usb": "USB"}


class OptionRegistry:
    """The options the installed plugins declared, and parsing of ``-M`` strings against them."""

    def __init__(self) -> None:
        self.options: dict[str, MachineOption] = {}

    def register(self, option: Property) -> None:
        if not isinstance(option, Property):
            raise PluginError(f"register_machine_options: expected a MachineOption, got {option!r}")
        if not isinstance(option, MachineOption):  # declared as a plain Property: same fields
            option = MachineOption(*option)
        why = option.problem()
        if why:
            raise PluginError(f"machine option declared by {option.plugin or '?'}: {why}")
        if option.name in self.options:
            other = self.options[option.name]
            raise PluginError(f"machine option {option.name!r} declared twice ({other.plugin or '?'} and {option.plugin or '?'})")
        self.options[option.name] = option

    def defaults(self) -> dict[str, Any]:
        return {name: opt.default for name, opt in self.options.items()}

    def parse_machine(self, specs: Iterable[str]) -> dict[str, Any]:
        """Parse ``-M`` values (``microvm,key=value,...``; several ``-M`` merge left to right,
        a key given twice keeps the last value, as QEMU's). Each value is converted as it
        comes (a malformed one is an error), and the declarations' checks see the merged
        values only: an earlier value a later one replaced is never refused."""
        values = self.defaults()
        given: set[str] = set()
        for spec in specs:
            for key, value in split_machine_opts(spec):
                given.add(key)
                if key == "type":
                    if value != "microvm":
                        raise ConfigError(f"unsupported machine type {value!r}: only 'microvm' is provided")
                    continue
                opt = self.options.get(key)
                if opt is None:
                    from .providers import hint

                    known = ", ".join(sorted(self.options)) or "(none: no plugin declares machine options)"
                    raise ConfigError(f"unknown machine option {key!r}{hint('machine', key)}; known: {known}")
                values[key] = opt._convert(value, "")
        for key in given:  # the merged values, as QEMU sets them: -M acpi=on -no-acpi is acpi=off
            opt = self.options.get(key)
            if opt is not None and opt.check is not None:
                opt.check(values[key])
        _check_acpi_only(values, given)
        return values

    def switch(self, values: dict[str, Any], name: str) -> bool:
        """Option ``name`` as on/off: a bool as it is, ``OnOffAuto`` with ``auto`` resolved
        through the declaration's ``auto_value``; False when no plugin declares it."""
        opt = self.options.get(name)
        if opt is None:
            return False
        return bool(opt.resolve(values.get(name, opt.default)))

    def legacy_devices(self, values: dict[str, Any]) -> LegacyDevices:
        """QEMU microvm's optional legacy devices as the parsed options ask for them."""
        return LegacyDevices(**{field: self.switch(values, opt) for field, opt in LEGACY_OPTIONS.items()})


def split_machine_opts(text: str) -> list[tuple[str, str]]:
    """``-M`` text as QEMU 7.2's keyval parser splits it, into (key, value) pairs.

    The first item may be the bare machine type (``microvm``: the implied key ``type``); it
    ends at the first comma. Every other item is ``key=value``, where ``,,`` in the value is a
    comma (``pit=off,,rtc=off`` is pit's value ``off,rtc=off``). One trailing comma is
    allowed; an empty item is ``Invalid parameter ''`` and a key without ``=`` is
    ``Expected '=' after parameter 'KEY'``, in QEMU's words.
    """
    out: list[tuple[str, str]] = []
    n, i = len(text), 0
    comma = text.find(",")
    head = text[: comma if comma >= 0 else n]
    if "=" not in head:
        if head == "":
            raise ConfigError(f"-M {text}: Invalid parameter ''")
        out.append(("type", head))
        i = n if comma < 0 else comma + 1
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        key = text[i:j]
        if key == "":
            raise ConfigError(f"-M {text}: Invalid parameter ''")
        if j == n or text[j] == ",":
            raise ConfigError(f"-M {text}: Expected '=' after parameter '{key}'")
        j += 1  # past '='
        value: list[str] = []
        while j < n:
            if text[j] == ",":
                if text[j + 1 : j + 2] == ",":
                    value.append(",")
                    j += 2
                    continue
                break
            value.append(text[j])
            j += 1
        out.append((key, "".join(value)))
        i = j + 1  # past the separating comma (or beyond the end)
    return out


def _check_acpi_only(values: dict[str, Any], given: set[str]) -> None:
    """``pcie=on``, ``ioapic2=on``, ``usb=on``: QEMU's microvm builds them only with ACPI.
    With ``acpi=off`` (or ``-no-acpi``) given, QEMU accepts ``on`` and ignores it, and so does
    microvm. Without it QEMU's default ``acpi=auto`` means ACPI and the device would exist
    there: microvm, which has no ACPI, says so instead of silently building another machine."""
    if "acpi" in given:  # acpi accepts only off here
        return
    for name, what in ACPI_ONLY.items():
        if name in given and values.get(name) in (True, "on"):
            raise ConfigError(f"machine option {name}=on: unsupported on microvm (QEMU's microvm adds {what} only "
                              "with ACPI, which microvm does not have; with acpi=off QEMU ignores it, as microvm does)")


def join_machine_opts(pairs: list[tuple[str, str]], like: str = "") -> str | None:
    """The inverse of :func:`split_machine_opts`: ``,`` in a value written ``,,``; None when
    nothing is left. Only the first item may be bare (QEMU's implied ``type``), and only when
    ``like`` (the text split) wrote it bare: a later ``type=microvm`` stays ``type=microvm``
    (written bare it would read as a key without ``=``), and a bare type keeps its spelling
    (its ``,`` is a separator there, never part of the value)."""
    bare = bool(pairs) and pairs[0][0] == "type" and not like.startswith("type=") and "=" not in like.split(",")[0]
    items = [v if n == 0 and bare else f"{k}={v.replace(',', ',,')}" for n, (k, v) in enumerate(pairs)]
    return ",".join(items) if items else None


def split_boot_opts(text: str) -> tuple[str | None, dict[str, str]]:
    """One ``-M`` text → (it without ``kernel=``, ``initrd=``, ``append=``, ``firmware=``;
    those values by run option: ``kernel``, ``initrd``, ``append``, ``bios``). A text that
    does not parse is returned as it is (the machine's parse reports it); None when only
    boot keys were in it (``-M kernel=FILE``)."""
    if not any(f"{k}=" in text for k in BOOT_KEYS):
        return text, {}
    try:
        pairs = split_machine_opts(text)
    except ConfigError:
        return text, {}
    boot = {BOOT_KEYS[k]: v for k, v in pairs if k in BOOT_KEYS}
    if not boot:
        return text, {}
    return join_machine_opts([(k, v) for k, v in pairs if k not in BOOT_KEYS], text), boot


def qemu_opts(text: str, implied: str | None = None, keys: Iterable[str] | None = None,
              flags: list[tuple[str, str, str]] | None = None, id_ok: bool = False,
              each: Callable[[str, str], None] | None = None, ids: list[str] | None = None) -> dict[str, str]:
    """``text`` as QEMU 7.2's QemuOpts parses it (``opts_do_parse`` in ``util/qemu-option.c``),
    for the options that use it (``-fw_cfg``, ``-m``, ``-name``, ``-accel``): ``{key: value}``.

    Items are separated by ``,``, and ``,,`` in a value is a comma (everywhere: a ``-name``,
    a ``-fw_cfg string=``). The first item may omit its key (it is ``implied``). Any other
    item without ``=`` is QEMU's deprecated short-form boolean: ``foo`` is ``foo=on`` and
    ``nofoo`` is ``foo=off``; each is appended to ``flags`` as (as given, key, value) for the
    caller to warn about (:func:`short_flag_warning`). A key given twice keeps the last value.
    With ``keys`` (QEMU's option description), any other key is ``Invalid parameter 'KEY'``,
    in QEMU's words; with ``id_ok``, ``id=`` is QemuOpts' own id: checked as QEMU checks it
    (``Parameter 'id' expects an identifier``), appended to ``ids`` and left out of the result
    (the caller refuses duplicates: :func:`duplicate_id`).
    ``each(key, value)`` sees every item in order, before a later one replaces it: QEMU
    checks each value as it is parsed (``-m ,size=64`` fails on the empty first size).
    """
    out: dict[str, str] = {}
    allowed = None if keys is None else frozenset(keys)
    i, n, first = 0, len(text), True
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        if j < n and text[j] == "=":
            key = text[i:j]
            value, i = _opt_value(text, j + 1)
        elif first and implied:
            key = implied
            value, i = _opt_value(text, i)
        else:
            given, i = text[i:j], j
            key, value = (given[2:], "off") if given.startswith("no") else (given, "on")
            if flags is not None:
                flags.append((given, key, value))
        i += 1  # past the separating comma (or beyond the end)
        first = False
        if key == "id" and id_ok:
            if not is_identifier(value):
                raise ConfigError("Parameter 'id' expects an identifier (letters, digits, '-', '.', '_', "
                                  "starting with a letter)")
            if ids is not None:
                ids.append(value)
            continue
        if allowed is not None and key not in allowed:
            raise ConfigError(f"Invalid parameter '{key}'")
        if each is not None:
            each(key, value)
        out[key] = value
    return out


def is_identifier(text: str) -> bool:
    """QEMU's ``id_wellformed``: letters, digits, ``-``, ``.``, ``_``, starting with a letter."""
    return (text[:1].isascii() and text[:1].isalpha()
            and all(c.isascii() and (c.isalnum() or c in "-._") for c in text))


def duplicate_id(option: str, texts: Iterable[str], implied: str) -> None:
    """QEMU's QemuOpts list without ``merge_lists`` (``-fw_cfg``, ``-accel``) refuses an
    ``id=`` given twice, on the later option: ``Duplicate ID 'X' for fw_cfg``. ``option`` is
    how messages name it (``--fw-cfg``), the list's name its last word."""
    seen: set[str] = set()
    for text in texts:
        ids: list[str] = []
        try:
            qemu_opts(text, implied, id_ok=True, ids=ids)
        except ConfigError as e:
            raise ConfigError(f"{option} {text}: {e}") from None
        for ident in ids[-1:]:  # a key given twice keeps the last value
            if ident in seen:
                raise ConfigError(f"{option} {text}: Duplicate ID '{ident}' for {option.lstrip('-').replace('-', '_')}")
            seen.add(ident)


def _opt_value(text: str, i: int) -> tuple[str, int]:
    """QEMU's ``get_opt_value``: the value from ``i`` to the first single ``,`` (``,,`` is a
    comma), and where it stopped."""
    n = len(text)
    value: list[str] = []
    while i < n:
        if text[i] == ",":
            if text[i + 1:i + 2] != ",":
                break
            i += 1
        value.append(text[i])
        i += 1
    return "".join(value), i


def short_flag_warning(option: str, text: str, flag: tuple[str, str, str]) -> str:
    """QEMU 7.2's warning for a short-form boolean (``warn_report`` and its hint, one line)."""
    given, key, value = flag
    return f"{option} {text}: short-form boolean option '{given}' deprecated; please use {key}={value} instead"


def _refuse_dtb(value: Any) -> None:
    if value:
        raise ConfigError(f"machine option dtb={value}: unsupported on microvm (x86 Linux gets a device tree "
                          "only as bzImage setup_data, which microvm does not build; microvm describes its "
                          "devices on the kernel command line and in the MP table)")


def _refuse_memory_backend(value: Any) -> None:
    if value is not None:  # QEMU 7.2's qemu_resolve_machine_memdev, word for word (also for '')
        raise ConfigError(f"Memory backend '{value}' not found (microvm has no -object memory-backend-*)")


def _generic(name: str, kind: str, default: Any, help_: str, check: Callable[[Any], None] | None = None) -> MachineOption:
    return MachineOption(name, kind, default, help_, check=check, plugin="core")


#: QEMU 7.2's generic machine properties (``machine_class_init`` in ``hw/core/machine.c``)
#: that microvm did not have: the boot files (the same as the options, see
#: :data:`BOOT_KEYS`), the RAM advice, and the ones microvm refuses in QEMU's words.
#: ``graphics`` and ``usb`` are declared with microvm's own options.
GENERIC_MACHINE_OPTIONS: tuple[MachineOption, ...] = (
    _generic("kernel", "str", None, "Linux kernel image file (the same as -kernel; the later one wins)"),
    _generic("initrd", "str", None, "Linux initial ramdisk file (the same as -initrd; the later one wins)"),
    _generic("append", "str", None, "Linux kernel command line (the same as -append; the later one wins)"),
    _generic("firmware", "str", None, "Firmware image (the same as -bios; the later one wins)"),
    _generic("dtb", "str", None, "Linux kernel device tree file: unsupported on microvm (no device tree)",
             _refuse_dtb),
    _generic("dumpdtb", "str", None, "Dump current dtb to a file and quit: accepted and ignored, as QEMU 7.2 "
             "ignores it on x86 (there is no device tree to dump)"),
    _generic("mem-merge", "bool", True, "Enable/disable memory merge support: on marks guest RAM "
             "MADV_MERGEABLE, so the host's KSM (if it runs) may merge identical pages"),
    _generic("dump-guest-core", "bool", True, "Include guest memory in a core dump: off marks guest RAM "
             "MADV_DONTDUMP"),
    _generic("memory-backend", "str", None, "Set RAM backend: unsupported on microvm (it names an -object, "
             "which microvm does not have)", _refuse_memory_backend),
)
