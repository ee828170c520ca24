"""Host output never blocks a vCPU (issue 12, item 2): a guest that prints forever, with the
VMM's stdout a pipe that nobody reads, still stops on SIGTERM, with the same status as a run
whose output is read."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kvm_helpers import build_guest, microvm_cmd, requires_kvm

pytestmark = [pytest.mark.kvm, requires_kvm]


def _run_then_term(elf: Path, stdout, metrics: Path, settle: float = 2.0) -> tuple[int, bytes]:
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), "--metrics", str(metrics)),
                         stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE)
    try:
        time.sleep(settle)  # pacing only: let the guest fill the pipe and the VMM's buffer
        p.send_signal(signal.SIGTERM)
        # generous: distinguishes "stops" from "hangs until SIGKILL"; not a timing assertion
        status = p.wait(timeout=10)
        return status, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_sigterm_stops_a_vm_whose_stdout_nobody_reads(tmp_path):
    elf = build_guest("print-loop", tmp_path)
    # the reference: output goes to /dev/null, which never stalls
    ref_status, ref_err = _run_then_term(elf, subprocess.DEVNULL, tmp_path / "ref.json")
    # stdout a pipe whose read end we hold but never read, shrunk to one page so that the
    # guest fills it within the first second
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    try:
        status, err = _run_then_term(elf, w, tmp_path / "stall.json")
    finally:
        os.close(r)
        os.close(w)
    assert status == ref_status == 0, (err, ref_err)
    assert b"did not stop" not in err
    counters = json.loads((tmp_path / "stall.json").read_text())["devices"]["chardev.serial0"]
    assert counters["bytes_dropped"] > 0, counters
    assert counters["bytes_written"] > 0, counters
