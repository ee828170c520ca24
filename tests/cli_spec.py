"""The command line up to the MachineSpec, without a machine: the ``specs`` fixture replaces
``run_spec`` with a recorder; ``run_main`` and ``one_spec`` drive ``microvm``'s main()."""
from __future__ import annotations

import pytest

import microvm.cli.main as climain
import microvm.machine
from microvm.spec import MachineSpec


@pytest.fixture
def specs(monkeypatch) -> list[MachineSpec]:
    """Replace run_spec: record the MachineSpec, return 0."""
    got: list[MachineSpec] = []

    def fake_run_spec(spec, host=None, ready=None):
        got.append(spec)
        return 0

    monkeypatch.setattr(microvm.machine, "run_spec", fake_run_spec)
    return got


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    rv = climain.main(list(argv))
    out, err = capsys.readouterr()
    return rv, out, err


def one_spec(argv: list[str], specs: list, capsys) -> MachineSpec:
    rv, _, err = run_main(argv, capsys)
    assert (rv, err) == (0, ""), err
    (spec,) = specs
    return spec
