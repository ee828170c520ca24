"""Operators install only the devices they need: the core alone plus one plugin works.

Builds a fresh virtual environment with the core and the serial_16550 plugin only (pip
fetches pluggy, typer and cffi from the package index, or from its cache), then checks that
only that plugin's options exist and that a guest boots on such a machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvm_helpers import REPO, build_guest, kvm_reason


@pytest.fixture(scope="module")
def minimal_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("selective") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(REPO), str(REPO / "plugins/serial_16550")],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        pytest.fail(f"pip install of core + serial_16550 failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return venv


def run(venv: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROVM_")}
    env["MICROVM_CACHE"] = str(venv.parent / "cache")
    return subprocess.run([str(venv / "bin/microvm"), *args], capture_output=True, text=True, env=env, timeout=60, **kw)


def test_only_the_installed_plugin_is_found(minimal_venv):
    r = run(minimal_venv, "plugins")
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["core", "serial_16550"], r.stdout
    assert "microvm-serial-16550 0.1.0" in r.stdout


def test_a_missing_plugins_option_does_not_exist(minimal_venv, tmp_path):
    r = run(minimal_venv, "run", "--kernel", str(tmp_path / "k"), "-M", "microvm,pit=off")
    assert r.returncode == 2
    assert r.stderr.startswith("microvm: error: unknown machine option 'pit'; known:")
    assert "isa-serial" in r.stderr


@pytest.mark.kvm
@pytest.mark.skipif(kvm_reason() is not None, reason=f"needs KVM: {kvm_reason()}")
def test_a_guest_boots_on_core_plus_serial(minimal_venv, tmp_path):
    """No irqchip plugin: a machine without interrupt controllers still runs the tiny guest."""
    elf = build_guest("hello-pvh", tmp_path)
    r = run(minimal_venv, "run", "--kernel", str(elf), "--no-reboot")
    assert r.stdout == "HELLO\n", r.stderr
    assert r.returncode == 0
