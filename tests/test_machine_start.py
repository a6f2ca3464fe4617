"""A QEMU that dies during the QMP handshake is reported as QEMU's death with
its stderr, not as the QMP library's connection error.

Seen for real: QEMU 7.2 with a KVM dirty ring connected to the QMP socket and
then aborted (an assertion in kvm_dirty_ring_reap_one) before the greeting; the
cell said "harness error: ConnectError".  A stand-in process does the same
here: it connects to the QMP socket it is given, writes an assertion message
on stderr and exits by SIGABRT.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from harness.errors import QemuError
from harness.qemu.machine import Machine

FAKE = r'''
import os, signal, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
sys.stderr.write("qemu: ../accel/kvm/kvm-all.c:750: kvm_dirty_ring_reap_one: "
                 "Assertion `dirty_gfns && ring_size' failed.\n")
sys.stderr.flush()
os.kill(os.getpid(), signal.SIGABRT)
'''


def test_death_during_qmp_handshake_names_qemu_and_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "fake_qemu.py"
    script.write_text(FAKE)
    qmp = tmp_path / "qmp.sock"
    machine = Machine("src", [sys.executable, str(script), str(qmp)], {},
                      qmp_path=qmp, serial_path=tmp_path / "serial.sock", logdir=tmp_path,
                      t0=time.monotonic())

    async def go() -> None:
        try:
            await machine.start()
        finally:
            await machine.close()

    with pytest.raises(QemuError) as err:
        asyncio.run(go())
    text = str(err.value)
    assert "src QEMU exited at start-up" in text, text
    assert "kvm_dirty_ring_reap_one" in text, text
