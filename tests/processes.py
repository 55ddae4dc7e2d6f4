"""Helpers for tests that drive other processes: a free loopback port for the servers they start (tests
target 127.0.0.1 only), and the event "the process is waiting for input"."""

from __future__ import annotations

import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# read, and the waits readline's input() makes before it reads: poll, select, pselect6, ppoll (x86_64), then
# read, pselect6, ppoll (aarch64)
WAITING_FOR_INPUT = {"0", "7", "23", "270", "271"} | {"63", "72", "73"}


def wait_until_reading(pid: int, timeout: float = 30) -> bool:
    """True once `pid` waits for input (in read(), or in the poll / select readline makes first): a signal
    sent now interrupts that wait. Output seen is not that event: a SIGINT between a prompt's write and the
    read waits for input."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/syscall").read_text().split()[0] in WAITING_FOR_INPUT:
                return True
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    return False


def one_line(proc, code: int, phrase: str) -> None:
    """A CLI failed as users should see it: exit `code`, one line on stderr naming the problem, no trace."""
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    err = err.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert phrase in err, err
