"""``cordflow profile``: put the Slurm profile where ``snakemake --profile slurm`` finds it.

Snakemake resolves a profile NAME in ``./NAME``, then the user's config folder
(``~/.config/snakemake/NAME``, ``$XDG_CONFIG_HOME`` honoured), then the site's
(``/etc/xdg/snakemake/NAME``); :func:`search_dirs` lists the same places, from the same
``platformdirs`` call Snakemake makes.

:func:`install` writes ``profiles/slurm/config.yaml`` plus a :class:`Site`'s settings to a
profile folder (the user's by default) and never replaces an existing one unless told to.
Site settings become ``default-resources`` of that profile: the workflow profile
(``profiles/default/``, loaded on top, winning per key) sets per-rule sizes and GPUs in
``set-resources`` and no ``default-resources``, so they pass through. ``gpu_model``
reaches GPU rules only (every other rule blanks it there). With a separate GPU
partition, a ``partitions.yaml`` (the plugin's ``--slurm-partition-config``) sends each
job to the partition that fits: GPU jobs to the GPU partition, the rest to the other.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cordflow.config import REPO_DIR

TEMPLATE = REPO_DIR / "profiles" / "slurm" / "config.yaml"
PROFILE_NAME = "slurm"
CONFIG_FILE = "config.yaml"
PARTITIONS_FILE = "partitions.yaml"
# Slurm partition and account names; the GPU model pattern is the plugin's own check.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_GPU_MODEL = re.compile(r"^[A-Za-z0-9_.]+$")
# The file names Snakemake reads in a profile folder.
_PROFILE_FILE = re.compile(r"(profile|config)(\.v\d+\+)?\.yaml")
# Marks the GPU partition in partitions.yaml (the plugin only sends GPU jobs where
# max_gpu > 0); the real per-job limit is Slurm's to enforce.
GPU_PARTITION_MAX_GPU = 1024


@dataclass(frozen=True)
class Site:
    """A cluster's settings; every field is optional (None: the cluster's default)."""

    partition: str | None = None
    gpu_partition: str | None = None
    account: str | None = None
    gpu_model: str | None = None

    def __post_init__(self) -> None:
        for flag, value, pattern in (
            ("--partition", self.partition, _NAME),
            ("--gpu-partition", self.gpu_partition, _NAME),
            ("--account", self.account, _NAME),
            ("--gpu-model", self.gpu_model, _GPU_MODEL),
        ):
            if value is not None and not pattern.match(value):
                raise ValueError(f"{flag} {value!r}: not a Slurm name (letters, digits and "
                                 f"{'_ .' if pattern is _GPU_MODEL else '_ . -'} only)")
        if self.gpu_partition is not None and self.partition is None:
            raise ValueError("--gpu-partition needs --partition too (where CPU jobs go)")

    @property
    def split_partitions(self) -> bool:
        return self.gpu_partition is not None and self.gpu_partition != self.partition


def search_dirs(cwd: str | Path | None = None) -> list[Path]:
    """Where Snakemake looks for a profile given by name, in its order."""
    try:
        from platformdirs import AppDirs
    except ImportError as e:  # comes with Snakemake
        raise SystemExit("cordflow profile needs platformdirs: "
                         "pip install -e '.[workflow]'") from e

    dirs = AppDirs("snakemake", "snakemake")
    return [Path(cwd or Path.cwd()), Path(dirs.user_config_dir), Path(dirs.site_config_dir)]


def default_dest(name: str = PROFILE_NAME) -> Path:
    """The user's profile folder for ``name`` (``$XDG_CONFIG_HOME/snakemake/NAME``)."""
    return search_dirs()[1] / name


def find(name: str = PROFILE_NAME, cwd: str | Path | None = None) -> Path | None:
    """The folder ``snakemake --profile NAME`` would use from ``cwd``, or None."""
    for d in search_dirs(cwd):
        candidate = d / name
        if candidate.is_dir() and any(_PROFILE_FILE.fullmatch(f.name)
                                      for f in candidate.iterdir()):
            return candidate
    return None


def _quoted(value: str) -> str:
    # Snakemake evaluates a resource value as Python: quoted, a name like `all` or
    # `long` stays a string instead of becoming the builtin of that name.
    return f"'{value}'"


def render(site: Site) -> dict[str, str]:
    """File name -> text of the profile for ``site`` (config.yaml, maybe partitions.yaml)."""
    import yaml

    if not TEMPLATE.is_file():
        raise FileNotFoundError(f"{TEMPLATE} is missing: run cordflow from its checkout")
    body = TEMPLATE.read_text()
    body = body[body.index("\nexecutor:") + 1:]  # drop the template's how-to header
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    head = (f"# Written by `cordflow profile install` on {stamp} from {TEMPLATE}.\n"
            "# Rerun it with --force to change the site settings at the end.\n"
            "# Per-rule sizes and GPUs: profiles/default/config.yaml in the checkout.\n")
    resources = {}
    if site.partition is not None and not site.split_partitions:
        resources["slurm_partition"] = _quoted(site.partition)
    if site.account is not None:
        resources["slurm_account"] = _quoted(site.account)
    if site.gpu_model is not None:
        resources["gpu_model"] = _quoted(site.gpu_model)
    tail = ""
    if resources:  # values passed the name checks: nothing to escape
        tail += ("# Inner quotes: Snakemake reads a resource value as Python.\n"
                 "default-resources:\n"
                 + "".join(f'  {k}: "{v}"\n' for k, v in resources.items()))
    if site.split_partitions:
        tail += f"slurm-partition-config: {PARTITIONS_FILE}\n"
    if tail:
        tail = "\n# Site settings.\n" + tail
    files = {CONFIG_FILE: head + body + tail}
    if site.split_partitions:
        gpu: dict = {"max_gpu": GPU_PARTITION_MAX_GPU}
        if site.gpu_model is not None:
            gpu["available_gpu_models"] = [site.gpu_model]
        files[PARTITIONS_FILE] = (
            "# Where each job goes (snakemake-executor-plugin-slurm picks the best fit):\n"
            "# GPU jobs fit only the GPU partition; the others prefer the one without GPUs.\n"
            + yaml.safe_dump({"partitions": {site.partition: {"max_gpu": 0},
                                             site.gpu_partition: gpu}}, sort_keys=False))
    return files


def install(site: Site, dest: str | Path | None = None, force: bool = False) -> dict[Path, str]:
    """Write the profile for ``site`` to ``dest`` (default :func:`default_dest`).

    Refuses (FileExistsError) when ``dest`` exists and is not empty, unless ``force``;
    with ``force`` it replaces the files it writes and drops a partitions.yaml the new
    settings no longer use. Returns path -> text of what it wrote.
    """
    from cordflow.io import write_text_atomic

    dest = Path(dest) if dest is not None else default_dest()
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} is a file, not a profile folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise FileExistsError(f"{dest} already holds a profile; look at it with "
                              f"`cordflow profile show`, or pass --force to replace it")
    files = render(site)
    written = {}
    for name, text in files.items():
        write_text_atomic(dest / name, text)
        written[dest / name] = text
    stale = dest / PARTITIONS_FILE
    if PARTITIONS_FILE not in files and stale.exists():
        stale.unlink()
    return written


app = typer.Typer(no_args_is_help=True, help=(
    "Install or show the Slurm profile that `snakemake --profile slurm` uses."))


@app.command("install")
def install_cmd(
    partition: Annotated[str | None, typer.Option(
        help="Partition for every job (for CPU jobs only, with --gpu-partition).")] = None,
    gpu_partition: Annotated[str | None, typer.Option(
        help="Partition for GPU jobs, when the site keeps GPUs apart.")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account to charge.")] = None,
    gpu_model: Annotated[str | None, typer.Option(
        help="GPU type for GPU jobs (sbatch --gpus=MODEL:N), e.g. a100.")] = None,
    dest: Annotated[Path | None, typer.Option(
        help="Profile folder to write [default: the user's, where `snakemake "
             "--profile slurm` looks].")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing profile.")] = False,
):
    """Write the Slurm profile with your site's settings, and show what was written."""
    try:
        site = Site(partition=partition, gpu_partition=gpu_partition, account=account,
                    gpu_model=gpu_model)
        written = install(site, dest, force=force)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        typer.echo(f"cordflow profile install: {e}", err=True)
        raise typer.Exit(2) from None
    for path, text in written.items():
        typer.echo(f"==> wrote {path}\n{text}")
    folder = next(iter(written)).parent
    used = find(PROFILE_NAME)
    if used is not None and used.resolve() == folder.resolve():
        typer.echo(f"`snakemake --profile {PROFILE_NAME}` run from here uses {folder}.")
    elif used is not None:
        typer.echo(f"note: `snakemake --profile {PROFILE_NAME}` run from here uses {used}, "
                   f"not this one; pass `--profile {folder}` to use it.")
    else:
        typer.echo(f"Use it with `snakemake --profile {folder}`.")


@app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="Profile name.")] = PROFILE_NAME,
):
    """Print the profile `snakemake --profile NAME` would use from here, and its files."""
    found = find(name)
    if found is None:
        places = ", ".join(str(d / name) for d in search_dirs())
        typer.echo(f"no profile {name!r} in {places}; write one with "
                   "`cordflow profile install`", err=True)
        raise typer.Exit(1)
    for path in sorted(found.glob("*.yaml")):
        typer.echo(f"==> {path}\n{path.read_text()}")
