"""A private, single-node Slurm started from the Debian packages, for tests and by hand.

:func:`ensure_packages` installs ``slurmctld slurmd slurm-client munge`` with apt-get when
they are missing (root only). :func:`start` brings up munged (as user munge), slurmctld
and slurmd, each a foreground child process with its own key, socket, ports, state and
logs under one folder, so nothing system-wide changes and two runs cannot collide. The
node has fake GPUs (gres, ``File=`` character devices 195:N). :meth:`Cluster.stop`
cancels what is still queued and stops exactly the three daemons it started.

By hand::

    python tests/slurm/minicluster.py start /tmp/myslurm   # prints `export SLURM_CONF=...`
    python tests/slurm/minicluster.py stop /tmp/myslurm
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
CPU_PARTITION = "cpu"
GPU_PARTITION = "gpu"
GPU_TYPE = "fake"
N_GPUS = 2
# What the node advertises (config_overrides): enough for the GPU rules' real requests.
NODE_CPUS = 32
NODE_MEM_MB = 256000
START_TIMEOUT_S = 60


class Unavailable(RuntimeError):
    """Slurm cannot be set up here (not root, or no apt-get); the reason says which."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def ensure_packages() -> None:
    """Install the Debian packages when a binary is missing. :class:`Unavailable` when
    this cannot work at all (not root; packages missing and no apt-get); a failing
    apt-get is an error, not a reason to skip."""
    if os.geteuid() != 0:
        raise Unavailable("starting slurmd and munged (and installing them with apt-get) "
                          "needs root")
    if not missing_binaries():
        return
    if shutil.which("apt-get") is None:
        raise Unavailable(f"Slurm binaries {missing_binaries()} are missing and there is "
                          "no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y",
               "--no-install-recommends", *PACKAGES]
    res = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:  # stale or absent package lists: refresh once, then retry
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"], env=env,
                       capture_output=True, text=True, timeout=900)
        res = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or missing_binaries():
        raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed (rc "
                           f"{res.returncode}); still missing {missing_binaries()}:\n"
                           f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """A Slurm client command against this cluster; its stdout."""
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (rc {res.returncode}): "
                               f"{res.stderr.strip()}\n{self.log_tail()}")
        return res.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones stay MinJobAge = 600 s), with
        allocation details (``scontrol -d -o show job``), one dict of fields per job or
        array task. ``GRES`` holds the allocated GPUs, e.g. ``gpu:fake:1(IDX:0)``."""
        out = self.run("scontrol", "-d", "-o", "show", "job", check=False)
        return [parse_record(line) for line in out.splitlines() if line.startswith("JobId=")]

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.logs / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                parts.append(f"--- {path} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop slurmd, slurmctld, munged (in that order)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name, check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.run(
                    "squeue", "-h", "-t", "PD,R,CG", check=False).strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def parse_record(line: str) -> dict[str, str]:
    """``Key=value Key2=value two ...`` -> dict; a value runs up to the next `` Key=``
    (keys look like ``JobId``, ``AllocNode:Sid``, ``CPUs/Task``, ``JOB_GRES``)."""
    out: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        m = _KEY.match(token)
        if m:
            key = m.group(1)
            out[key] = token[m.end():]
        elif key is not None and token:
            out[key] += " " + token
    return {k: v.strip() for k, v in out.items()}


_KEY = re.compile(r"^([A-Za-z][\w:/]*)=")


def _render(template: str, dest: Path, values: dict) -> None:
    text = string.Template((HERE / template).read_text()).substitute(values)
    dest.write_text(text)


def _spawn(cluster: Cluster, name: str, cmd: list[str], **kw) -> None:
    out = open(cluster.logs / f"{name}.out", "w")  # noqa: SIM115 (the daemon's log, open while it runs)
    cluster.procs[name] = subprocess.Popen(cmd, env=cluster.env, stdout=out,
                                           stderr=subprocess.STDOUT, **kw)
    out.close()


def _wait(cluster: Cluster, what: str, ready, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting "
                                   f"for {what}:\n{cluster.log_tail()}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n"
                       f"{cluster.log_tail()}")


def start(root: str | Path) -> Cluster:
    """Start munged, slurmctld and slurmd with everything under ``root`` (created; it must
    be traversable by user munge, so not under a 0700 folder). Returns once the node is
    idle; on any failure the daemons already started are stopped before raising."""
    root = Path(root).resolve()
    munge = pwd.getpwnam("munge")
    for sub in ("bin", "etc", "logs", "state/ctld", "state/slurmd", "dev", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # munged (user munge) must reach its socket folder
    for p in root.parents:
        if not os.stat(p).st_mode & 0o001:
            raise Unavailable(f"{p} is not traversable by user munge; start the cluster "
                              "in a folder under /tmp (tempfile.mkdtemp) instead")
    mdir = root / "munge"
    os.chown(mdir, munge.pw_uid, munge.pw_gid)
    os.chmod(mdir, 0o700)
    key = mdir / "munge.key"
    key.write_bytes(os.urandom(128))
    os.chown(key, munge.pw_uid, munge.pw_gid)
    os.chmod(key, 0o400)
    for i in range(N_GPUS):
        dev = root / "dev" / f"nvidia{i}"
        if not dev.exists():
            os.mknod(dev, 0o666 | 0o020000, os.makedev(195, i))  # S_IFCHR

    node = socket.gethostname().split(".")[0]
    values = {
        "host": node, "node": node, "ctld_port": free_port(), "slurmd_port": free_port(),
        "munge_socket": mdir / "munge.socket", "state": root / "state", "logs": root / "logs",
        "cpus": NODE_CPUS, "mem_mb": NODE_MEM_MB, "gpu_type": GPU_TYPE, "n_gpus": N_GPUS,
        "last_gpu": N_GPUS - 1, "dev": root / "dev",
        "cpu_partition": CPU_PARTITION, "gpu_partition": GPU_PARTITION,
    }
    conf = root / "etc" / "slurm.conf"
    _render("slurm.conf.in", conf, values)
    _render("gres.conf.in", root / "etc" / "gres.conf", values)
    # Inside a job, the Slurm jobstep plugin (0.6.1) drops SLURM_* from the environment
    # of its nested `srun`, SLURM_CONF included, so srun would look for the system-wide
    # /etc/slurm/slurm.conf. This srun on PATH restores the variable and runs the real one.
    srun = shutil.which("srun")
    shim = root / "bin" / "srun"
    shim.write_text(f"#!/bin/sh\nSLURM_CONF={shlex.quote(str(conf))} exec "
                    f"{shlex.quote(srun)} \"$@\"\n")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
    cluster = Cluster(root=root, env=env)
    (root / "cluster.json").write_text(json.dumps({"env": {"SLURM_CONF": str(conf)}}))
    try:
        _spawn(cluster, "munged", [
            "munged", "--foreground", "--force", f"--socket={mdir / 'munge.socket'}",
            f"--key-file={key}", f"--pid-file={mdir / 'munged.pid'}",
            f"--seed-file={mdir / 'munged.seed'}", f"--log-file={mdir / 'munged.log'}",
        ], user=munge.pw_uid, group=munge.pw_gid)
        _wait(cluster, "the munge socket", (mdir / "munge.socket").exists)
        _spawn(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
        _wait(cluster, "slurmctld", lambda: subprocess.run(
            ["scontrol", "ping"], env=env, capture_output=True, text=True).stdout.count("UP") > 0)
        _spawn(cluster, "slurmd", ["slurmd", "-D", "-f", str(conf), "-N", node])
        _wait(cluster, "the node to be idle", lambda: "idle" in subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True).stdout)
    except BaseException:
        cluster.stop()
        raise
    (root / "cluster.json").write_text(json.dumps({
        "env": {"SLURM_CONF": str(conf)},
        "pids": {name: p.pid for name, p in cluster.procs.items()},
    }))
    return cluster


def _stop_by_record(root: Path) -> None:
    """`stop` from another process: SIGTERM the pids `start` recorded, slurmd first."""
    record = json.loads((root / "cluster.json").read_text())
    env = dict(os.environ, **record["env"])
    subprocess.run(["scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name], env=env,
                   capture_output=True)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = record.get("pids", {}).get(name)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit("usage: minicluster.py start|stop DIR")
    where = Path(sys.argv[2])
    if sys.argv[1] == "start":
        ensure_packages()
        c = start(where)
        # The daemons are our children: detach them so they outlive this command.
        print(f"export SLURM_CONF={shlex.quote(c.env['SLURM_CONF'])} "
              f"PATH={shlex.quote(str(where.resolve() / 'bin'))}:$PATH")
        os._exit(0)
    _stop_by_record(where)
