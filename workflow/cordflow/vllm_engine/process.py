"""The job's side of a vLLM engine process: start it, ask it, stop it, never wait unbounded.

:class:`EngineProcess` starts ``<python> -m cordflow.vllm_engine.server`` (the python of the
vLLM venv, :func:`vllm_python`) in a new process group and talks to it over two anonymous
pipes (:mod:`cordflow.vllm_engine.protocol`); the server's own stdout and stderr (vLLM's
log) go to ``log_path`` (default: ``engine.log`` in the process's temporary folder), whose
last lines every error quotes. Safety:

- every read and write has a deadline (``start_timeout_s`` for start-up, ``timeout_s`` per
  request): an engine that hangs is killed and the job fails with :class:`EngineError`
  naming the request, the time and the log's tail; one that dies fails the job the same
  way at the next read (its pipe closes);
- :meth:`EngineProcess.close` (called by the engine's owner in ``finally``, and by
  ``atexit``) asks the server to exit, then kills its whole process group (SIGTERM, then
  SIGKILL) and removes the temporary folder; if the job itself is killed, the server gets
  SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and its pipe closes, so it never outlives
  the job;
- nothing is shared between runs: each start has its own folder and pipes, so a rerun after
  a crash starts clean.

Standard library only (+ :mod:`cordflow.config` for the checkout's folder).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cordflow.vllm_engine import protocol

log = logging.getLogger("cordflow.vllm")

# The engine server's entry (run as `python -m` of its module in the vLLM venv); written as
# "module:function" so the rerun-code analysis (tests/test_reruns.py) follows it.
SERVER = "cordflow.vllm_engine.server:main"
ENV_PYTHON = "CORDFLOW_VLLM_PYTHON"
DEFAULT_VENV = ".venv-vllm"


class EngineError(RuntimeError):
    """The vLLM engine process failed, hung or could not start (the message says which)."""


def vllm_python(setting: str | None = None) -> Path:
    """The python of the vLLM venv: the setting (``train.vllm.python``...), else
    ``$CORDFLOW_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of this checkout (what
    ``make vllm-env`` builds). A relative path is tried from the working directory, then
    from the checkout. Fails with a message saying how to get one."""
    from cordflow.config import REPO_DIR

    chosen = setting or os.environ.get(ENV_PYTHON) or f"{DEFAULT_VENV}/bin/python"
    path = Path(chosen).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_DIR / path]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    source = ("the setting" if setting else ENV_PYTHON if os.environ.get(ENV_PYTHON)
              else "the default")
    raise EngineError(
        f"no python for the vLLM engine at {' or '.join(map(str, candidates))} (from "
        f"{source}): build it with `make vllm-env` (.venv-vllm, CPU) or point train.vllm.python / "
        f"evaluate.vllm.python or ${ENV_PYTHON} at the python of an environment made from "
        f"envs/vllm.yaml (GPU)")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no engine log)"
    return "\n".join(text[-lines:]) or "(engine log is empty)"


class EngineProcess:
    """One vLLM engine server process (see the module docstring)."""

    def __init__(self, python: str | Path, timeout_s: float, env: dict[str, str] | None = None,
                 name: str = "vLLM", log_path: str | Path | None = None):
        self.name, self.timeout_s = name, float(timeout_s)
        self.folder = Path(tempfile.mkdtemp(prefix="cordflow-vllm-"))
        self.log_path = Path(log_path) if log_path else self.folder / "engine.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._to = self._from = -1
        to_server_r, self._to = os.pipe()
        self._from, from_server_w = os.pipe()
        os.set_blocking(self._to, False)  # writes bounded by their deadline too
        child_env = {**os.environ, **(env or {})}
        # The server runs this checkout's cordflow, whatever the vLLM venv has installed.
        pkg_parent = str(Path(__file__).resolve().parents[2])
        child_env["PYTHONPATH"] = os.pathsep.join(
            [pkg_parent, *filter(None, [os.environ.get("PYTHONPATH")])])
        cmd = [str(python), "-m", SERVER.split(":")[0], str(to_server_r),
               str(from_server_w), str(self.folder)]
        atexit.register(self.close)
        try:
            with open(self.log_path, "wb") as logf:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    pass_fds=(to_server_r, from_server_w), start_new_session=True,
                    env=child_env, cwd=self.folder)
        except OSError as e:
            self.close()
            raise EngineError(f"could not start the {name} engine ({python}): {e}") from e
        finally:
            os.close(to_server_r)
            os.close(from_server_w)
        self.info: dict = {}

    def start(self, msg: dict, timeout_s: float) -> dict:
        """The ``start`` request (build the engine), bounded by ``timeout_s``."""
        t0 = time.monotonic()
        self.info = self.request({"op": "start", **msg}, timeout_s=timeout_s, what="start-up")
        log.info("%s engine up in %.1f s (pid %d, vllm %s, log %s)", self.name,
                 time.monotonic() - t0, self.proc.pid, self.info.get("vllm"), self.log_path)
        return self.info

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, msg: dict, timeout_s: float | None = None, what: str | None = None
                ) -> dict:
        """Send ``msg``, return the reply; any failure kills the engine and raises
        :class:`EngineError` (the engine is not reused after an error)."""
        what = what or msg.get("op", "request")
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise self._fail(f"is not running: it exited (exit code {code}) before {what}")
        deadline = time.monotonic() + limit
        try:
            protocol.write(self._to, msg, deadline)
            reply = protocol.read(self._from, deadline)
        except protocol.Timeout as e:
            raise self._fail(f"did not answer {what} within {limit:.0f} s (hung?): killed it",
                             e) from e
        except (protocol.Closed, BrokenPipeError, OSError) as e:
            code = self.proc.wait(timeout=10) if self.proc else None
            raise self._fail(f"died during {what} (exit code {code})", e) from e
        if not reply.get("ok"):
            raise self._fail(f"failed {what}: {reply.get('error', reply)}")
        return reply

    def _fail(self, why: str, cause: BaseException | None = None) -> EngineError:
        tail = _tail(self.log_path)  # before the kill: the server removes its folder
        self.kill()
        detail = f" [{type(cause).__name__}: {cause}]" if cause else ""
        return EngineError(f"the {self.name} engine process {why}{detail}. Last lines of its "
                           f"log {self.log_path}:\n{tail}")

    def kill(self) -> None:
        """Kill the server's whole process group: SIGTERM, then SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def close(self, grace_s: float = 10.0) -> None:
        """Stop the engine (politely, then by force), close the pipes, remove its folder.
        Safe to call more than once. A ``log_path`` given at start-up is kept."""
        if self.alive():
            with contextlib.suppress(Exception):
                protocol.write(self._to, {"op": "shutdown"}, time.monotonic() + 2.0)
                protocol.read(self._from, time.monotonic() + grace_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        self.kill()
        # Leftovers in the group (a compile worker...): gone with the group.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for fd in (self._to, self._from):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = -1
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def group_members(pgid: int) -> Sequence[int]:
    """Pids still in process group ``pgid`` (for tests: no orphan after close)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


