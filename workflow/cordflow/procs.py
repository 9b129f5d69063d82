"""Process lifetime: a child that must not outlive the process that started it.

Standard library only: the vLLM engine server (in its own venv) and the training ranks
(cordflow.train.dist) both use it.
"""

from __future__ import annotations

import ctypes
import os
import signal


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), and exit now (code 3) if it already has. Safe in a
    ``preexec_fn`` (``os._exit``). Elsewhere than Linux it does nothing: a Slurm job's
    cleanup still stops the job's processes."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent or parent == 1:
        os._exit(3)
