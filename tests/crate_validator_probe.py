"""Validates a crate with roc-validator, offline, and prints what it found as JSON.

Started by tests/test_crate_validator.py inside ``.venv-crate-check`` (roc-validator cannot
share cordflow's venv: see pyproject.toml's crate-check group)::

    .venv-crate-check/bin/python tests/crate_validator_probe.py CRATE --cache DIR \\
        --out REPORT.json [--severity REQUIRED] [--withhold URL]

roc-validator's offline mode answers HTTP from its requests-cache SQLite cache alone (a miss
is a 504 response, never a fetch). This script fills the cache at DIR first with the JSON-LD
contexts of tests/data/jsonld (their sources are in the README there): each file is stored
as the response to its w3id.org address by requests-cache's own session, through a
transport adapter that reads the file. ``--withhold URL`` leaves that context out. Sockets
are shut in this process: an attempt to reach the network fails and is reported. The
report goes to a file (roc-validator prints its log to stdout as the process ends).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
from pathlib import Path

CONTEXTS = Path(__file__).resolve().parent / "data" / "jsonld"
# URL -> the file served for it (the w3id.org addresses a cordflow crate's @context names).
SERVED = {
    "https://w3id.org/ro/crate/1.1/context": CONTEXTS / "ro-crate-1.1-context.jsonld",
    "https://w3id.org/ro/terms/workflow-run/context": CONTEXTS / "workflow-run-context.jsonld",
}
PROFILE = "workflow-run-crate-0.5"

network: list[str] = []


def _refuse(what: str):
    def refuse(*args, **kwargs):
        network.append(f"{what}{args!r}"[:300])
        raise OSError(f"no network in this test ({what})")
    return refuse


def shut_sockets() -> None:
    socket.socket.connect = _refuse("connect")
    socket.socket.connect_ex = _refuse("connect_ex")
    socket.getaddrinfo = _refuse("getaddrinfo")


def preload(cache_name: str, withhold: set[str]) -> list[str]:
    """Store each context of :data:`SERVED` (but ``withhold``) in the cache; return the URLs."""
    from requests.adapters import HTTPAdapter
    from requests_cache import CachedSession
    from urllib3 import HTTPResponse

    class Files(HTTPAdapter):
        def send(self, request, **kwargs):
            data = SERVED[request.url].read_bytes()
            raw = HTTPResponse(body=io.BytesIO(data), status=200, preload_content=False,
                               request_url=request.url,
                               headers={"Content-Type": "application/ld+json",
                                        "Content-Length": str(len(data))})
            return self.build_response(request, raw)

    urls = [u for u in SERVED if u not in withhold]
    with CachedSession(cache_name=cache_name, backend="sqlite", expire_after=-1) as session:
        for url in urls:
            session.mount(url, Files())
            response = session.get(url)
            response.raise_for_status()
            assert session.cache.contains(url=url), url
    return urls


def validate(crate: Path, severity: str, cache_name: str) -> dict:
    from importlib.metadata import version

    from rocrate_validator import services
    from rocrate_validator.models import Severity, ValidationSettings

    settings = ValidationSettings(
        rocrate_uri=str(crate), profile_identifier=PROFILE,
        requirement_severity=Severity[severity], abort_on_first=False,
        offline=True, cache_path=cache_name)
    result = services.validate(settings)
    stats = result.statistics
    return {
        "version": version("roc-validator"),
        "passed": result.passed(),
        "profiles": sorted(p.identifier for p in stats.validated_profiles),
        "checks": {"total": stats.total_checks, "passed": len(stats.passed_checks),
                   "failed": len(stats.failed_checks), "skipped": stats.total_skipped_checks,
                   "skipped_in_result": result.skipped_checks_count},
        "by_severity": {s.name: len(c) for s, c in stats.checks_by_severity.items()},
        "skipped": [d.to_dict() for d in result.skipped_check_details],
        "failed": sorted({c.identifier for c in stats.failed_checks}),
        "issues": [{"check": i.check.identifier, "severity": i.severity.name,
                    "message": str(i.message), "entity": i.violatingEntity}
                   for i in result.get_issues()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crate", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="a folder for the HTTP cache")
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    parser.add_argument("--severity", default="REQUIRED",
                        choices=["REQUIRED", "RECOMMENDED", "OPTIONAL"])
    parser.add_argument("--withhold", action="append", default=[], choices=sorted(SERVED))
    args = parser.parse_args(argv)
    shut_sockets()
    cache_name = str(args.cache / "http-cache")
    report = {"preloaded": preload(cache_name, set(args.withhold))}
    report |= validate(args.crate, args.severity, cache_name)
    report["network"] = network
    args.out.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
