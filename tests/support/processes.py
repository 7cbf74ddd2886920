"""Stopping the real processes tests and benchmarks start: SIGTERM, a bounded wait, then
SIGKILL, so no helper process outlives its test."""

from __future__ import annotations

import contextlib
import signal
import subprocess


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (if it still runs), wait up to ``timeout`` s, then kill it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
