"""microvm.options (plugin-declared -M keys) and microvm.spec (sizes, property lists, the
machine description's validation)."""
from __future__ import annotations

import pytest

from microvm.errors import ConfigError, PluginError
from microvm.options import MachineOption, OptionRegistry
from microvm.spec import MAX_SMP, MachineSpec, parse_props

MiB, GiB = 1 << 20, 1 << 30


# ---- MachineOption.parse --------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("on", "on"), ("off", "off"), ("auto", "auto"), ("OFF", "off"), (" Auto ", "auto")])
def test_on_off_auto(text: str, value: str) -> None:
    assert MachineOption("pit", "OnOffAuto", "auto", "i8254 PIT").parse(text) == value


@pytest.mark.parametrize("text", ["", "maybe", "1", "yes"])
def test_on_off_auto_refuses_other_words(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        MachineOption("pit", "OnOffAuto", "auto", "").parse(text)
    assert str(info.value) == f"machine option pit={text}: expected on, off or auto"


@pytest.mark.parametrize("text", ["on", "yes", "true", "y", "ON", "True"])
def test_bool_true(text: str) -> None:
    assert MachineOption("isa-serial", "bool", True, "").parse(text) is True


@pytest.mark.parametrize("text", ["off", "no", "false", "n", "OFF", "No"])
def test_bool_false(text: str) -> None:
    assert MachineOption("isa-serial", "bool", True, "").parse(text) is False


@pytest.mark.parametrize("text", ["", "2", "auto", "onn"])
def test_bool_refuses_other_words(text: str) -> None:
    with pytest.raises(ConfigError, match=f"^machine option isa-serial={text}: expected on or off$"):
        MachineOption("isa-serial", "bool", True, "").parse(text)


@pytest.mark.parametrize("text, value", [("5", 5), ("0x10", 16), ("-3", -3), (" 12 ", 12), ("010", 8), ("0", 0)])
def test_int(text: str, value: int) -> None:
    assert MachineOption("x-virtio-irq", "int", 5, "").parse(text) == value


@pytest.mark.parametrize("text", ["", "five", "1.5", "0xg", "0o17", "0b1", "1_000", "08", "0x", "--1"])
def test_int_refuses_non_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match="expected a number"):
        MachineOption("x-virtio-irq", "int", 5, "").parse(text)


def test_choice() -> None:
    opt = MachineOption("kernel-irqchip", "choice", "split", "", choices=("split", "on", "off"))
    assert opt.parse("on") == "on"
    assert opt.parse(" split ") == "split"
    with pytest.raises(ConfigError) as info:
        opt.parse("maybe")
    assert str(info.value) == "machine option kernel-irqchip=maybe: expected one of split, on, off"
    with pytest.raises(ConfigError):
        opt.parse("ON")  # choices are exact


def test_str_is_taken_as_given() -> None:
    assert MachineOption("x-name", "str", "", "").parse(" some Thing ") == "some Thing"


# ---- OptionRegistry -------------------------------------------------------------------------
@pytest.fixture
def registry() -> OptionRegistry:
    r = OptionRegistry()
    r.register(MachineOption("isa-serial", "bool", True, "COM1", plugin="serial"))
    r.register(MachineOption("pit", "OnOffAuto", "auto", "i8254", plugin="pit"))
    r.register(MachineOption("x-irqs", "int", 5, "", plugin="core"))
    return r


def test_defaults(registry: OptionRegistry) -> None:
    assert registry.parse_machine([]) == {"isa-serial": True, "pit": "auto", "x-irqs": 5}
    assert registry.parse_machine(["microvm"]) == registry.defaults()


def test_parse_machine(registry: OptionRegistry) -> None:
    assert registry.parse_machine(["microvm,isa-serial=off,pit=on"]) == {"isa-serial": False, "pit": "on", "x-irqs": 5}


def test_several_machine_options_merge_left_to_right(registry: OptionRegistry) -> None:
    got = registry.parse_machine(["microvm,pit=on,x-irqs=7", "isa-serial=off", "microvm,pit=off"])
    assert got == {"isa-serial": False, "pit": "off", "x-irqs": 7}


@pytest.mark.parametrize("spec", ["microvm,pit=off", "type=microvm,pit=off", "pit=off", "microvm,pit=off,"])
def test_type_prefix(registry: OptionRegistry, spec: str) -> None:
    assert registry.parse_machine([spec])["pit"] == "off"


@pytest.mark.parametrize("spec, message", [
    # each as QEMU 7.2 answers it (checked with qemu-system-x86_64 -M ...)
    ("microvm,,", "-M microvm,,: Invalid parameter ''"),
    ("microvm,,pit=off,", "-M microvm,,pit=off,: Invalid parameter ''"),
    (",microvm", "-M ,microvm: Invalid parameter ''"),
    ("microvm,pit=off,,isa-serial=off", "machine option pit=off,isa-serial=off: expected on, off or auto"),
    ("type=microvm,,pit=off", "unsupported machine type 'microvm,pit=off': only 'microvm' is provided"),
])
def test_empty_items_and_escaped_commas_as_qemu(registry: OptionRegistry, spec: str, message: str) -> None:
    """Issue 12: ``-M microvm,,`` was accepted although QEMU refuses it."""
    with pytest.raises(ConfigError) as info:
        registry.parse_machine([spec])
    assert str(info.value) == message


def test_a_key_given_twice_keeps_the_last_value_as_qemu(registry: OptionRegistry) -> None:
    assert registry.parse_machine(["microvm,pit=off,pit=on"])["pit"] == "on"


@pytest.mark.parametrize("spec, name", [("pc,pit=off", "pc"), ("q35", "q35"), ("type=pc", "pc"), ("microvm,type=isapc", "isapc")])
def test_other_machine_types_are_refused(registry: OptionRegistry, spec: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        registry.parse_machine([spec])
    assert str(info.value) == f"unsupported machine type {name!r}: only 'microvm' is provided"


def test_unknown_key_lists_the_known_ones(registry: OptionRegistry) -> None:
    with pytest.raises(ConfigError) as info:
        registry.parse_machine(["microvm,rtc=off"])
    assert str(info.value) == ("unknown machine option 'rtc' (provided by the microvm-rtc-mc146818 plugin, not installed: "
                               "pip install microvm-rtc-mc146818); known: isa-serial, pit, x-irqs")


def test_unknown_key_with_no_options_declared() -> None:
    with pytest.raises(ConfigError, match="no plugin declares machine options"):
        OptionRegistry().parse_machine(["microvm,pit=on"])


def test_key_without_value(registry: OptionRegistry) -> None:
    with pytest.raises(ConfigError, match=r"-M microvm,pit: Expected '=' after parameter 'pit'"):
        registry.parse_machine(["microvm,pit"])


def test_bad_value_names_the_option(registry: OptionRegistry) -> None:
    with pytest.raises(ConfigError, match="machine option pit=sometimes: expected on, off or auto"):
        registry.parse_machine(["microvm,isa-serial=on,pit=sometimes"])


def test_duplicate_declaration_is_refused(registry: OptionRegistry) -> None:
    with pytest.raises(PluginError) as info:
        registry.register(MachineOption("pit", "bool", False, "", plugin="other-pit"))
    assert str(info.value) == "machine option 'pit' declared twice (pit and other-pit)"
    assert registry.options["pit"].plugin == "pit"


def test_only_machine_options_can_be_registered() -> None:
    with pytest.raises(PluginError, match="expected a MachineOption"):
        OptionRegistry().register(("pit", "bool"))  # type: ignore[arg-type]


# ---- parse_props -----------------------------------------------------------------------------
def test_parse_props_positional() -> None:
    assert parse_props("virtio-blk-device,drive=d0,serial=abc", positional="driver") == {
        "driver": "virtio-blk-device", "drive": "d0", "serial": "abc",
    }


def test_parse_props_without_positional() -> None:
    assert parse_props("id=d0,file=/tmp/disk.img,format=raw") == {"id": "d0", "file": "/tmp/disk.img", "format": "raw"}


def test_parse_props_comma_escape() -> None:
    assert parse_props("file,id=c0,path=/tmp/a,,b", positional="backend") == {
        "backend": "file", "id": "c0", "path": "/tmp/a,b",
    }
    assert parse_props("path=a,,,id=x") == {"path": "a,", "id": "x"}
    assert parse_props("path=,,,,") == {"path": ",,"}


def test_parse_props_value_may_contain_equals() -> None:
    assert parse_props("id=n0,script=a=b") == {"id": "n0", "script": "a=b"}


def test_parse_props_empty_items_are_skipped() -> None:
    assert parse_props(",id=x,,") == {"id": "x,"}
    assert parse_props("") == {}


def test_parse_props_word_without_value() -> None:
    with pytest.raises(ConfigError, match=r"'readonly' needs a value \(key=value\)"):
        parse_props("id=d0,readonly")
    with pytest.raises(ConfigError, match="needs a value"):
        parse_props("stdio,id=c0")  # no positional name given


def test_parse_props_duplicate_key() -> None:
    with pytest.raises(ConfigError, match="id given twice"):
        parse_props("id=a,id=b")


# ---- MachineSpec -----------------------------------------------------------------------------
def test_default_spec_is_valid() -> None:
    spec = MachineSpec()
    spec.validate()
    assert (spec.mem_size, spec.smp, spec.serial) == (128 * MiB, 1, ["mon:stdio"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mem_size": 0}, "-m: guest memory must be larger than 0"),
        ({"mem_size": -MiB}, "-m: guest memory must be larger than 0"),
        ({"mem_size": MiB}, "at least 2 MiB"),
        ({"mem_size": 64 * MiB + 1}, "multiple of 4 KiB"),
        ({"smp": 0}, "--smp 0: the number of vCPUs must be between 1 and 255"),
        ({"smp": -1}, "--smp -1: the number of vCPUs must be between 1 and 255"),
        ({"smp": 256}, "--smp 256: the number of vCPUs must be between 1 and 255"),
    ],
)
def test_validate_refuses(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MachineSpec(**kwargs).validate()
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs", [{"smp": MAX_SMP}, {"smp": 1}, {"mem_size": 2 * MiB}, {"mem_size": 3 * GiB + 4096}])
def test_validate_accepts_the_limits(kwargs: dict) -> None:
    MachineSpec(**kwargs).validate()
    assert MAX_SMP == 255


def test_parsed_backends() -> None:
    spec = MachineSpec(
        chardevs=["stdio,id=con", "file,id=log,path=/tmp/x,,y"],
        drives=["id=d0,file=/a.img,format=raw"],
        netdevs=["tap,id=n0,ifname=tap0"],
    )
    spec.validate()
    con, log = spec.chardev_configs["con"], spec.chardev_configs["log"]
    assert (con.backend, con.id, con.props) == ("stdio", "con", {})
    assert (log.backend, log.id, log.props) == ("file", "log", {"path": "/tmp/x,y"})
    d0 = spec.drive_configs["d0"]
    assert (d0.id, d0.file, d0.format, d0.readonly) == ("d0", "/a.img", "raw", False)
    n0 = spec.netdev_configs["n0"]
    assert (n0.backend, n0.id, n0.props) == ("tap", "n0", {"ifname": "tap0"})


def test_parsed_needs_unique_ids() -> None:
    with pytest.raises(ConfigError, match=r"--chardev null: id=\.\.\. is required"):
        MachineSpec(chardevs=["null"]).validate()
    with pytest.raises(ConfigError, match="--drive: duplicate id 'd0'"):
        MachineSpec(drives=["id=d0,file=a", "id=d0,file=b"]).validate()
