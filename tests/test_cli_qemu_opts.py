"""QEMU 7.2's QemuOpts splitting (``opts_do_parse`` in ``util/qemu-option.c``), one splitter
(``microvm.options.qemu_opts``) for every option that uses it: ``-fw_cfg``, ``-m``, ``-name``,
``-accel``. ``,,`` is a comma everywhere, a key given twice keeps the last value, a bare later
item is a short-form boolean with QEMU's deprecation warning, other keys are QEMU's
``Invalid parameter 'KEY'``.

The lines run through the real ``main()`` with ``run_spec`` replaced by a recorder (the spec
is built and validated for real).
"""
from __future__ import annotations

import pytest

from microvm.boot.firmware import parse_fw_cfg_option
from microvm.cli.tospec import parse_name
from microvm.errors import ConfigError

from cli_spec import one_spec, run_main, specs  # noqa: F401 (specs is a fixture)

MiB = 1 << 20


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """Files the spec accepts as paths (the recorder never loads them)."""
    out = {}
    for name in ("vmlinux",):
        (tmp_path / name).write_bytes(b"\x7fELF not really")
        out[name] = str(tmp_path / name)
    return out


def test_qemu_opts_split() -> None:
    from microvm.options import qemu_opts

    assert qemu_opts("opt/a,,b,string=x,,y,,", "name") == {"name": "opt/a,b", "string": "x,y,"}
    assert qemu_opts("a,k=1,k=2", "name") == {"name": "a", "k": "2"}        # the last wins
    flags: list = []
    assert qemu_opts("a,debug-threads,noplain", "guest", flags=flags) == {"guest": "a", "debug-threads": "on",
                                                                          "plain": "off"}
    assert flags == [("debug-threads", "debug-threads", "on"), ("noplain", "plain", "off")]
    with pytest.raises(ConfigError, match=r"^Invalid parameter 'bogus'$"):
        qemu_opts("a,bogus=1", "name", ("name", "file"))


def test_fw_cfg_string_with_commas() -> None:
    assert parse_fw_cfg_option("name=opt/a,,b,string=x,,y") == ("opt/a,b", b"x,y")
    assert parse_fw_cfg_option("opt/c,string=1,,2,,3,id=item0") == ("opt/c", b"1,2,3")


def test_fw_cfg_bare_item_is_qemus_short_form_boolean() -> None:
    """QemuOpts: a later item without '=' is KEY=on; one fw_cfg does not have is QEMU's
    'Invalid parameter' (not a message of its own)."""
    with pytest.raises(ConfigError, match=r"^--fw-cfg opt/x,string=a,bogus: Invalid parameter 'bogus'$"):
        parse_fw_cfg_option("opt/x,string=a,bogus")


def test_name_with_commas(files: dict, specs: list, capsys) -> None:
    assert parse_name("my,,guest,process=p,,q") == ("my,guest", "p,q")
    spec = one_spec(["-name", "guest=a,,b", "-kernel", files["vmlinux"], "-nodefaults"], specs, capsys)
    assert spec.name == "a,b"


def test_fw_cfg_short_form_is_warned_as_qemu_does(files: dict, specs: list, capsys) -> None:
    rv, _, err = run_main(["-fw_cfg", "opt/x,string=a,,b,noid", "-kernel", files["vmlinux"], "-nodefaults"], capsys)
    assert rv == 0
    assert err == ("microvm: warning: -fw_cfg opt/x,string=a,,b,noid: short-form boolean option 'noid' deprecated; "
                   "please use id=off instead\n")
    assert specs[0].fw_cfg_files == [("opt/x", b"a,b")]



def test_short_form_booleans_are_warned_in_every_qemu_opts_option(files: dict, specs: list, capsys) -> None:
    rv, _, err = run_main(["-name", "vm,debug-threads", "-kernel", files["vmlinux"], "-nodefaults"], capsys)
    assert rv == 0 and specs[0].name == "vm"
    assert err == ("microvm: warning: -name vm,debug-threads: short-form boolean option 'debug-threads' deprecated; "
                   "please use debug-threads=on instead\n")


# ---- QemuOpts' own id= (-accel, -fw_cfg): QEMU checks its syntax and refuses duplicates -------
def test_accel_takes_an_id(files: dict, specs: list, capsys) -> None:
    one_spec(["-accel", "kvm,id=x", "-kernel", files["vmlinux"], "-nodefaults"], specs, capsys)
    specs.clear()
    one_spec(["-fw_cfg", "opt/a,string=1,id=a.b-c_d", "-fw_cfg", "opt/b,string=2,id=e", "-kernel", files["vmlinux"],
              "-nodefaults"], specs, capsys)


@pytest.mark.parametrize("argv, message", [
    (["-accel", "kvm,id=1x"], "-accel kvm,id=1x: Parameter 'id' expects an identifier"),
    (["-accel", "kvm,id="], "-accel kvm,id=: Parameter 'id' expects an identifier"),
    (["-accel", "kvm,id=x", "-accel", "tcg,id=x"], "-accel tcg,id=x: Duplicate ID 'x' for accel"),
    (["-fw_cfg", "opt/a,string=1,id=1y"], "-fw_cfg opt/a,string=1,id=1y: Parameter 'id' expects an identifier"),
    (["-fw_cfg", "opt/a,string=1,id="], "-fw_cfg opt/a,string=1,id=: Parameter 'id' expects an identifier"),
    (["-fw_cfg", "opt/a,string=1,id=y", "-fw_cfg", "opt/b,string=2,id=y"],
     "-fw_cfg opt/b,string=2,id=y: Duplicate ID 'y' for fw_cfg"),
])
def test_bad_ids_in_qemus_words(argv: list, message: str, files: dict, capsys) -> None:
    """QEMU 7.2's messages (measured), on the option that has the bad id."""
    rv, out, err = run_main([*argv, "-kernel", files["vmlinux"], "-nodefaults"], capsys)
    assert (rv, out) == (1, "") and err.startswith(f"microvm: {message}") and len(err.splitlines()) == 1, err
    run_argv = ["run", "--kernel", files["vmlinux"]]
    for i in range(0, len(argv), 2):
        run_argv += ["--fw-cfg" if argv[i] == "-fw_cfg" else "--accel", argv[i + 1]]
    rv, out, err = run_main(run_argv, capsys)
    assert rv == 2 and err.startswith("microvm: error: -") and message.split(": ", 1)[1] in err, err
