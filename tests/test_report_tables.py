"""Rejected rows are a readable table in the Snakemake report (issue 16 section 4): the
report offered rejected.parquet as text/plain (binary to the reader); the stages now write
the same rows as HTML beside it, and the rules put that in the report, never a parquet."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd


class Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.scripts = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_source_writes_its_rejected_rows_as_an_html_table(repo, tmp_path):
    bad = "<script>alert('x')</script>"
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"question": "What is 20 plus 1?", "answer": "21"}) + "\n"
        + json.dumps({"question": "", "answer": "1"}) + "\n"
        + json.dumps({"question": f"{bad} Which?", "answer": "B", "choices": ["x"]}) + "\n")
    params = {"seed": 3, "source": {
        "splits": ["train", "test"],
        "builtin": {"families": ["addition"], "n_per_family": {"train": 2, "test": 1}},
        "files": [{"path": "qa.jsonl", "split": "test"}]}}
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    res = subprocess.run([sys.executable, "-m", "cordflow", "source", "--params",
                          json.dumps(params), "--out-dir", "out"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rejected = pd.read_parquet(tmp_path / "out" / "rejected.parquet")
    page = (tmp_path / "out" / "rejected.html").read_text()
    cells = Cells()
    cells.feed(page)
    header, *rows = cells.rows
    assert header == list(rejected.columns)
    assert rows == rejected.astype(str).values.tolist()  # every row, every cell
    assert cells.scripts == 0 and bad not in page  # data is escaped, never markup
    assert "2 rows" in page
    record = json.loads((tmp_path / "out" / "rejected.html.prov.json").read_text())
    assert record["rule"] == "source"


def test_gather_writes_the_rejected_clips_as_an_html_table(spoken):
    page = (spoken / "results" / "audio" / "rejected.html").read_text()
    rejected = pd.read_parquet(spoken / "results" / "audio" / "rejected.parquet")
    assert page.startswith("<!DOCTYPE html>") and "Rejected clips" in page
    assert f"{len(rejected)} row" in page


def test_the_report_shows_tables_not_parquet(repo):
    """Every file a rule puts in the report is one the report can show."""
    text = "\n".join(p.read_text() for p in sorted((repo / "rules").glob("*.smk")))
    reported = re.findall(r"report\(\s*\n?\s*([\w\"'/{}.]+|\w+)", text)
    assert reported, "no report() entries found"
    assert not [r for r in reported if ".parquet" in r], reported
    for path in ("results/qa/rejected.html", "results/audio/rejected.html"):
        assert re.search(rf"report\(\s*\"{re.escape(path)}\"", text), path
