"""What every stage run shares: params parsing, seeding, logging, timing, provenance."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("cordflow")


def parse_params(params: str) -> dict:
    """``--params`` is a JSON object, or ``@path`` to a JSON file."""
    text = Path(params[1:]).read_text() if params.startswith("@") else params
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params is not valid JSON ({e}); pass the rule's config slice") from e
    if not isinstance(value, dict):
        raise SystemExit("--params must be a JSON object")
    return value


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and (when a stage has imported it) torch. Stages that use torch
    seed again where their randomness starts (model init, training), so importing torch
    here just to seed it (seconds per command) is not needed."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


def _rank_zero() -> bool:
    """Whether this process writes the stage's records: always, unless it is a torchrun
    rank other than 0 (cordflow.train.dist; read from the environment: no torch here)."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def stage_run(
    rule: str,
    params: dict,
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
) -> Iterator[list[Path]]:
    """Run a stage: seed, log, time it, and on success write a provenance record per output.

    The body may append paths to the yielded list: files whose names are known only at
    run time that its outputs are made of or point to (the content-addressed clips a TTS
    shard wrote or reused, and the JSON beside each). They get no sidecar each: every
    output's record lists them with their sha256
    (``companions``), and ``cordflow audit`` checks them. Nothing is recorded if the body
    raises.
    """
    from cordflow import provenance
    from cordflow.provenance import record_path

    setup_logging()
    outputs = list(outputs)
    for out in outputs:  # a killed run must not leave a record of the past beside no output
        stale = record_path(out)
        if stale.is_file() and _rank_zero():
            stale.unlink()
            log.info("removed %s: the record of a previous %s, about to be replaced", stale, out)
    seed_everything(int(params.get("seed", 0)))
    started = dt.datetime.now(dt.timezone.utc)
    log.info("rule %s: params %s", rule, json.dumps(params, sort_keys=True))
    extra: list[Path] = []
    yield extra
    ended = dt.datetime.now(dt.timezone.utc)
    if not _rank_zero():  # a torchrun rank other than 0 writes nothing
        return
    provenance.write_records(rule, list(inputs), outputs, params, started, ended,
                             companions=extra)
    log.info("rule %s done in %.1f s", rule, (ended - started).total_seconds())
