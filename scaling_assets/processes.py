"""Process identities that survive pid reuse: ``"<host> <pid> <start time>"``.

A pid alone may name another process once the first one exits; with the host and the process start
time it names one process only. Recorded for the writer of each staging folder
(``assets/storage.py``), for each forked run worker (``compute/run_workers.py``) and for the daemon a
``study run`` starts (``study/daemon.py``), so each can be found again, or known gone, from another process.
"""

from __future__ import annotations

import socket

import psutil


def process_identity(pid: int) -> str:
    """The identity of a live process, else ""."""
    try:
        return f"{socket.gethostname()} {pid} {psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return ""


def identity_host(identity: str | None) -> str | None:
    """The host an identity names, or None when it is not an identity."""
    parts = (identity or "").split()
    return parts[0] if len(parts) == 3 else None


def running_process(identity: str | None) -> psutil.Process | None:
    """The process an identity names, if it runs on this host; None when it is gone (or its pid was
    reused), on another host, or the text is not an identity."""
    if identity_host(identity) != socket.gethostname():
        return None
    pid = identity.split()[1]
    if not pid.isdigit() or process_identity(int(pid)) != identity:
        return None
    try:
        return psutil.Process(int(pid))
    except psutil.Error:
        return None
