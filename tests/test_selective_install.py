"""Operators install only the devices they need: the core alone plus one plugin works.

Builds a fresh virtual environment with the core and the serial_16550 plugin only (pip
fetches pluggy, typer and cffi from the package index, or from its cache), then checks that
only that plugin's options exist and that a guest boots on such a machine. A second one
holds the core and the third-party-shaped virtio_rng plugin only, which must install and
pass its own tests there.
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
    import tomllib

    version = tomllib.loads((REPO / "plugins/serial_16550/pyproject.toml").read_text())["project"]["version"]
    assert f"microvm-serial-16550 {version}" in r.stdout


def test_a_missing_plugins_option_does_not_exist(minimal_venv, tmp_path):
    r = run(minimal_venv, "run", "--kernel", str(tmp_path / "k"), "-M", "microvm,pit=off")
    assert r.returncode == 2
    assert r.stderr.startswith("microvm: error: unknown machine option 'pit' (provided by the microvm-pit-i8254 plugin, "
                               "not installed: pip install microvm-pit-i8254); known:")
    assert "isa-serial" in r.stderr


@pytest.mark.kvm
@pytest.mark.skipif(kvm_reason() is not None, reason=f"needs KVM: {kvm_reason()}")
def test_a_guest_boots_on_core_plus_serial(minimal_venv, tmp_path):
    """No irqchip plugin: a machine without interrupt controllers still runs the tiny guest."""
    elf = build_guest("hello-pvh", tmp_path)
    r = run(minimal_venv, "run", "--kernel", str(elf), "--no-reboot")
    assert r.stdout == "HELLO\n", r.stderr
    assert r.returncode == 0


@pytest.fixture(scope="module")
def rng_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("selective-rng") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(REPO), str(REPO / "plugins/virtio_rng") + "[test]"],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        pytest.fail(f"pip install of core + virtio_rng failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return venv


def test_core_plus_virtio_rng_alone_installs_and_passes_its_tests(rng_venv, tmp_path):
    """The third-party proof: installed from its own directory next to the core only (no
    other plugin, no repository on sys.path), virtio_rng is found and its tests pass."""
    r = run(rng_venv, "plugins")
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["core", "virtio_rng"], r.stdout
    r = run(rng_venv, "run", "--kernel", str(tmp_path / "k"), "--device", "virtio-rng-device,help")
    assert r.returncode == 0 and r.stdout.startswith("virtio-rng-device options:\n"), (r.stdout, r.stderr)
    assert "  max-bytes=<int64>" in r.stdout and "  period=<int64>" in r.stdout, r.stdout
    # the plugin's tests, run from a copy outside the repository, against the installed packages
    import shutil

    tests = shutil.copytree(REPO / "plugins/virtio_rng/tests", tmp_path / "tests")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROVM_", "PYTHONPATH"))}
    t = subprocess.run([str(rng_venv / "bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-2000:]
    assert " passed" in t.stdout and "failed" not in t.stdout
