"""``snakemake --profile slurm`` on a real single-node Slurm, and ``cordflow profile``.

The ``slurm``-marked tests start munged, slurmctld and slurmd from the Debian packages
(tests/slurm/minicluster.py installs them with apt-get when missing), install the profile
the way a user does (``cordflow profile install`` into ``$XDG_CONFIG_HOME``), run
Snakemake in a temporary copy of the checkout, and read back from slurmctld what every
job asked for and got. They skip only where that cannot work (not root, or no apt-get).
The unmarked tests check the profile files and what Snakemake makes of them, no Slurm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "slurm"))
import minicluster  # noqa: E402
from dagrun import copy_checkout  # noqa: E402

from cordflow import profile  # noqa: E402

# What the Slurm run builds, from config/test.yaml: [] is the default target (rule all,
# the whole DAG: every rule, GPU rules on the fake GPUs). ["results/qa/train.parquet"] is
# the quick one (~40 s) for working on the cluster set-up itself.
WORKFLOW_TARGETS: list[str] = []
WORKFLOW_TIMEOUT_S = 1200
PROBE_TIMEOUT_S = 180
# Rules that must run on a GPU (issue #5); every other rule must not ask for one.
GPU_RULES = {"base", "warmup", "train", "evaluate"}
SITE = ["--partition", minicluster.CPU_PARTITION, "--gpu-partition",
        minicluster.GPU_PARTITION, "--gpu-model", minicluster.GPU_TYPE]
BIN = Path(sys.executable).parent


def workflow_resources(root: Path = REPO) -> dict[str, dict]:
    return yaml.safe_load((root / "profiles/default/config.yaml").read_text())["set-resources"]


def workflow_rules() -> set[str]:
    text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    return set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M))


def cordflow(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(env, PYTHONPATH=str(REPO / "workflow"))
    return subprocess.run([sys.executable, "-m", "cordflow", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def snakemake(*args: str, env: dict, cwd: Path, timeout_s: int) -> subprocess.CompletedProcess:
    """`snakemake ARGS`, stopped with SIGINT (which cancels its Slurm jobs) at timeout_s."""
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout_s), str(BIN / "snakemake"), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s + 60)


def user_env(base: dict, xdg: Path) -> dict:
    """A user's shell: the venv first on PATH (jobs run `python -m cordflow` with it),
    the profile under $XDG_CONFIG_HOME, no PYTHONPATH (the Snakefile sets its own)."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "SNAKEMAKE_PROFILE")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_CONFIG_HOME"] = str(xdg)
    return env


# ------------------------------------------------------------------ profile, no Slurm

def test_install_writes_where_snakemake_looks_for_the_profile_name(tmp_path):
    xdg, elsewhere = tmp_path / "xdg", tmp_path / "cwd"
    elsewhere.mkdir()
    env = user_env(os.environ, xdg)
    res = cordflow("profile", "install", "--partition", "batch", "--account", "lab",
                   env=env, cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    dest = xdg / "snakemake" / "slurm"
    assert f"wrote {dest / 'config.yaml'}" in res.stdout
    assert "slurm_partition: \"'batch'\"" in res.stdout  # it shows what it wrote
    found = subprocess.run(
        [sys.executable, "-c", "from snakemake.cli import get_profile_dir;"
         "print(get_profile_dir('slurm')[0])"],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == dest
    config = yaml.safe_load((dest / "config.yaml").read_text())
    assert config["executor"] == "slurm"
    assert config["slurm-status-command"] == "squeue"
    assert config["default-resources"] == {"slurm_partition": "'batch'", "slurm_account": "'lab'"}
    assert not (dest / "partitions.yaml").exists()


def test_install_never_overwrites_without_force(tmp_path):
    dest = tmp_path / "slurm"
    env = user_env(os.environ, tmp_path / "xdg")
    first = cordflow("profile", "install", "--partition", "a", "--gpu-partition", "g",
                     "--dest", str(dest), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (dest / "config.yaml").read_text()
    again = cordflow("profile", "install", "--partition", "b", "--dest", str(dest),
                     env=env, cwd=tmp_path)
    assert again.returncode == 2
    assert str(dest) in again.stderr and "--force" in again.stderr
    assert (dest / "config.yaml").read_text() == before
    forced = cordflow("profile", "install", "--partition", "b", "--dest", str(dest),
                      "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    config = yaml.safe_load((dest / "config.yaml").read_text())
    assert config["default-resources"] == {"slurm_partition": "'b'"}
    assert "slurm-partition-config" not in config
    assert not (dest / "partitions.yaml").exists()  # the old split is gone, not stale


def test_gpu_partition_writes_a_partition_file_that_routes_gpu_jobs(tmp_path):
    written = profile.install(profile.Site(partition="cpu", gpu_partition="gpu",
                                           gpu_model="a100"), tmp_path / "p")
    config = yaml.safe_load(written[tmp_path / "p" / "config.yaml"])
    assert config["slurm-partition-config"] == "partitions.yaml"
    assert config["default-resources"] == {"gpu_model": "'a100'"}  # partition: per job
    parts = yaml.safe_load((tmp_path / "p" / "partitions.yaml").read_text())["partitions"]
    assert parts["cpu"]["max_gpu"] == 0
    assert parts["gpu"]["max_gpu"] >= 1 and parts["gpu"]["available_gpu_models"] == ["a100"]


@pytest.mark.parametrize("site, flag", [
    (dict(partition="gpu;rm -rf ~"), "--partition"),
    (dict(account="a b"), "--account"),
    (dict(gpu_model="'a100'"), "--gpu-model"),
    (dict(gpu_partition="gpu"), "--gpu-partition"),
])
def test_bad_site_settings_are_refused_naming_the_option(site, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        profile.Site(**site)


def test_workflow_profile_sizes_every_rule_and_gpus_only_the_gpu_rules():
    resources = workflow_resources()
    assert set(resources) == workflow_rules()
    for rule, res in resources.items():
        assert res["mem_mb"] > 0 and res["runtime"] > 0, rule
        if rule in GPU_RULES:
            assert res["gpu"] >= 1 and res["cpus_per_gpu"] >= 1, rule
            assert "gpu_model" not in res, rule  # the site's model applies
        else:
            assert "gpu" not in res and res["gpu_model"] == "", rule  # never a GPU job


def test_site_settings_reach_every_job_and_the_gpu_model_only_gpu_jobs(tmp_path):
    work = copy_checkout(tmp_path / "work")
    env = user_env(os.environ, tmp_path / "xdg")
    res = cordflow("profile", "install", "--partition", "batch", "--account", "lab",
                   "--gpu-model", "h100", env=env, cwd=work)
    assert res.returncode == 0, res.stderr
    dry = snakemake("--profile", "slurm", "--configfile", "config/test.yaml", "-n",
                    env=env, cwd=work, timeout_s=120)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    jobs = re.findall(r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    resources: (.*)$",
                      dry.stdout, flags=re.M)
    assert {rule for rule, _ in jobs} == workflow_rules() | {"all"}
    for rule, line in jobs:
        if rule == "all":
            continue  # the target rule runs no job
        res = dict(kv.split("=", 1) for kv in line.split(", "))
        assert res["slurm_partition"] == "batch" and res["slurm_account"] == "lab", rule
        want = workflow_resources()[rule]
        assert int(res["mem_mb"]) == want["mem_mb"] and int(res["runtime"]) == want["runtime"]
        if rule in GPU_RULES:
            assert res["gpu_model"] == "h100" and int(res["gpu"]) == want["gpu"], rule
        else:
            assert res["gpu_model"] == "" and "gpu" not in res, rule


# ------------------------------------------------------------------ a real Slurm

@pytest.fixture(scope="module")
def cluster():
    try:
        minicluster.ensure_packages()
    except minicluster.Unavailable as e:
        msg = (f"SLURM TESTS NOT RUN: {e}. CI runs them as root on Debian, where they "
               "install slurmctld, slurmd, slurm-client and munge themselves.")
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    root = tempfile.mkdtemp(prefix="cordflow-slurm-")  # not under pytest's 0700 folders
    try:
        c = minicluster.start(root)
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    yield c
    c.stop()
    shutil.rmtree(root, ignore_errors=True)


def rule_of(job: dict) -> str:
    """The rule a Slurm job ran: the plugin's comment is rule_<name>[_wildcards_...]."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def minutes(limit: str) -> int:
    """Slurm's [D-]HH:MM:SS time limit in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def megabytes(mem: str) -> float:
    return float(mem[:-1]) * {"M": 1, "G": 1024, "T": 1024 ** 2}[mem[-1]]


def jobs_in(cluster, workdir: Path) -> dict[str, dict]:
    """Slurm's record of each job (array task) submitted from ``workdir``, by job id."""
    return {j["JobId"]: j for j in cluster.jobs() if Path(j["WorkDir"]) == workdir}


def assert_asked_for_what_the_profile_says(job: dict, root: Path = REPO) -> None:
    rule = rule_of(job)
    want = workflow_resources(root)[rule]
    where = f"Slurm job {job['JobId']} (rule {rule})"
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", where
    assert minutes(job["TimeLimit"]) == want["runtime"], where
    # An array job's --mem carries a small payload allowance from the plugin.
    assert 0 <= megabytes(job["MinMemoryNode"]) - want["mem_mb"] <= 16, where
    tres = job.get("TresPerJob") or ""
    if rule in GPU_RULES:
        assert job["Partition"] == minicluster.GPU_PARTITION, where
        assert f"gpu:{minicluster.GPU_TYPE}:{want['gpu']}" in tres, where
        assert job["JOB_GRES"] == f"gpu:{minicluster.GPU_TYPE}:{want['gpu']}", where
        assert int(job["NumCPUs"]) == want["gpu"] * want["cpus_per_gpu"], where
    else:
        assert job["Partition"] == minicluster.CPU_PARTITION, where
        assert "gpu" not in tres and job["JOB_GRES"] == "(null)", where


def explain(res: subprocess.CompletedProcess, work: Path, cluster) -> str:
    """Why a run failed: its output, the job and rule logs, the daemons' logs."""
    head = f"snakemake exited {res.returncode}"
    if res.returncode in (124, 137, -9):
        head += " (timed out: stopped with SIGINT, then SIGKILL)"
    logs = sorted((work / ".snakemake" / "slurm_logs").rglob("*.log")) + sorted(
        (work / "logs").rglob("*.log"))
    tails = [f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
             for p in logs]
    return "\n".join([head, res.stdout[-2000:], res.stderr[-4000:], *tails,
                      cluster.log_tail(20)])


@pytest.mark.slurm
def test_profile_sends_gpu_rules_to_gpus_and_shards_as_one_array(cluster, tmp_path):
    """Profile mechanics on a probe workflow whose rules carry the workflow's names."""
    work = tmp_path / "probe"
    shutil.copytree(REPO / "tests" / "slurm" / "probe", work)
    shutil.copytree(REPO / "profiles" / "default", work / "profiles" / "default")
    env = user_env(cluster.env, tmp_path / "xdg")
    res = cordflow("profile", "install", *SITE, env=env, cwd=work)
    assert res.returncode == 0, res.stderr
    run = snakemake("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2",
                    env=env, cwd=work, timeout_s=PROBE_TIMEOUT_S)
    assert run.returncode == 0, explain(run, work, cluster)
    jobs = jobs_in(cluster, work)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs.values():
        by_rule.setdefault(rule_of(job), []).append(job)
        assert_asked_for_what_the_profile_says(job)
    assert sorted(by_rule) == ["base", "tts_shard"]
    shards = by_rule["tts_shard"]
    assert len(shards) == 3 and len({j.get("ArrayJobId") for j in shards}) == 1
    assert sorted(int(j["ArrayTaskId"]) for j in shards) == [1, 2, 3]
    seen = {k: dict(kv.split("=", 1) for kv in (work / f"out/tts_shard/{k}.txt")
                    .read_text().split()) for k in range(3)}
    assert {s["array"] for s in seen.values()} == {shards[0]["ArrayJobId"]}
    assert all(s["gpus"] == "" for s in seen.values())
    (base,) = by_rule["base"]
    ran = dict(kv.split("=", 1) for kv in (work / "out/base.txt").read_text().split())
    assert ran["job"] == base["JobId"]
    assert ran["gpus"] in {str(i) for i in range(minicluster.N_GPUS)}  # a device it was given


@pytest.mark.slurm
def test_workflow_runs_every_job_through_sbatch(cluster, tmp_path):
    """The test config's DAG (WORKFLOW_TARGETS) via `snakemake --profile slurm`, the train
    jobs on 2 ranks (2 GPUs each; the fake GPUs have no driver, so the ranks use gloo)."""
    work = copy_checkout(tmp_path / "work")
    wp = work / "profiles/default/config.yaml"
    workflow_profile = yaml.safe_load(wp.read_text())
    workflow_profile["set-resources"]["train"].update(ranks=2, gpu=2)
    wp.write_text(yaml.safe_dump(workflow_profile, sort_keys=False))
    env = user_env(cluster.env, tmp_path / "xdg")
    res = cordflow("profile", "install", *SITE, env=env, cwd=work)
    assert res.returncode == 0, res.stderr
    run = snakemake("--profile", "slurm", "--configfile", "config/test.yaml",
                    "--slurm-init-seconds-before-status-checks", "2", *WORKFLOW_TARGETS,
                    env=env, cwd=work, timeout_s=WORKFLOW_TIMEOUT_S)
    assert run.returncode == 0, explain(run, work, cluster)
    for target in WORKFLOW_TARGETS:
        assert (work / target).exists(), target

    jobs = jobs_in(cluster, work)
    records = {p: json.loads(p.read_text()) for p in (work / "results").rglob("*.prov.json")}
    assert records, "the run wrote no provenance records"
    made_by: dict[str, set[str]] = {}
    for path, rec in records.items():
        job_id = rec["slurm_job_id"]
        assert job_id, f"{path.relative_to(work)} was made outside Slurm"
        assert job_id in jobs, f"{path.relative_to(work)}: Slurm job {job_id} is not this run's"
        assert rule_of(jobs[job_id]) == rec["rule"], path
        made_by.setdefault(rec["rule"], set()).add(job_id)
    assert set(jobs) == set().union(*made_by.values()), "a Slurm job made no output"
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", run.stderr)
    local = len(re.findall(r"^localrule \w+:", run.stderr, flags=re.M))
    assert done and int(done[-1][0]) == len(jobs) + local  # no other job ran
    for job in jobs.values():
        assert_asked_for_what_the_profile_says(job, work)
    for log in (work / "logs" / "train").glob("*.log"):  # every train job ran 2 ranks
        text = log.read_text()
        assert "on 2 rank(s)" in text and "rank 1 of 2" in text, log
    array_rules = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())[
        "slurm-array-jobs"].split(",")
    for rule in map(str.strip, array_rules):
        tasks = [jobs[i] for i in made_by.get(rule, ())]
        if len(tasks) > 1:
            assert len({j.get("ArrayJobId") for j in tasks}) == 1, f"{rule}: not one array"
    if not WORKFLOW_TARGETS:  # the whole DAG: the GPU rules really ran on GPUs
        assert set(made_by) >= GPU_RULES
