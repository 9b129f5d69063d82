"""``cordflow audit``: check an artifact's whole lineage against its provenance records.

:func:`audit` walks from one artifact back to the sources: for every recorded artifact
on the way it checks that the file (every file, for a directory; every companion file a
job listed) still has the sha256 its record holds, and that every input still has the
sha256 the consuming job recorded. An input is either a workflow artifact (covered by a
record: its own ``.prov.json``, that of a directory artifact holding it, or a record
listing it as a companion), whose lineage is then checked in turn, or, outside the results
folder, a source (a user QA file, a staged dataset, model weights): its hash must match
but it needs no record. An input under the results folder that no record covers is a
problem. :func:`audit_all` checks every record under a folder and that every file in it
is covered by one.

Each file is hashed once per :class:`Auditor` (shared by every check it makes), in a
small thread pool for the many-file cases (model folders, audio stores).

Problems are :class:`Problem` values (path, kind, detail); kinds: ``changed`` (content
differs from what was recorded), ``missing`` (recorded but gone), ``unrecorded`` (a
workflow file no record covers), ``bad-record`` (a record that cannot be read).

Each problem says how to repair it with the fewest jobs (:func:`repair_command`): an
artifact that is changed or gone is made again by ``snakemake --forcerun P -- P`` (a file:
that one job; the same bytes come back, so what was made from it stays valid) or
``snakemake --forcerun P`` (a folder such as a model: its job and the jobs made from it,
which Snakemake would rerun anyway for the folder's new time); an artifact made from an
input that has changed since (a stale consumer) by ``snakemake --forcerun P``. A consumer
of an artifact that is itself changed needs nothing of its own: repairing the artifact
repairs it. :attr:`Report.commands` lists the commands in the order to run them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cordflow.io import RESUME_DIR, sha256_file
from cordflow.provenance import (
    ENGINE_FILES,
    SUFFIX,
    directory_files,
    is_record,
    read_record,
    record_path,
)

# Temporary folders that cordflow.io.atomic_path leaves only if a job was killed.
_TMP_LEFTOVER = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def norm(path: str | Path) -> Path:
    """Absolute, normalised path (symlinks kept: a path is judged where it is)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _key(path: str | Path) -> str:
    """:func:`norm` as a string: the key the hot loops (a store's 160,000 clips) use, where
    a ``Path`` per file costs more than its stat."""
    return os.path.normpath(os.path.abspath(path))


def shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it."""
    path = norm(path)
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def short(sha: str | None) -> str:
    return (sha or "-")[:12]


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


def _stat_key(st: os.stat_result) -> str:
    """What a file's content cannot change without changing: size, mtime, ctime, inode
    (ctime moves on every write and cannot be set back by a user, as mtime can)."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


class StatCache:
    """sha256 by path and :func:`_stat_key`, kept between audits in a small SQLite file
    (``.cordflow/audit-cache.sqlite`` beside the results folder): a file whose stat is
    unchanged is not read again. ``cordflow audit --deep`` (and export-crate) do not use it."""

    def __init__(self, path: Path):
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS sha (path TEXT PRIMARY KEY, stat TEXT, "
                        "sha256 TEXT)")
        # One read of the whole table: a query per file costs more than hashing a small one.
        self._known = {p: (k, s) for p, k, s in self.db.execute("SELECT * FROM sha")}
        self._new: dict[str, tuple[str, str]] = {}

    def get(self, path: Path, st: os.stat_result) -> str | None:
        row = self._known.get(str(path))
        return row[1] if row is not None and row[0] == _stat_key(st) else None

    def put(self, path: Path, st: os.stat_result, sha: str) -> None:
        self._new[str(path)] = (_stat_key(st), sha)

    def save(self) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO sha VALUES (?, ?, ?)",
                                [(p, k, s) for p, (k, s) in self._new.items()])
        self._new.clear()


class HashCache:
    """sha256 of files, each hashed at most once (many at a time in a thread pool); with a
    :class:`StatCache`, a file whose stat did not change since an earlier audit is not read.
    ``bytes`` and ``read`` count what was actually read."""

    def __init__(self, workers: int | None = None, stat_cache: StatCache | None = None):
        self._sha: dict[str, str] = {}  # by _key(path)
        self.workers = workers or min(8, (os.cpu_count() or 1) + 2)
        self.stat_cache = stat_cache
        self.bytes = 0
        self.read = 0

    def __len__(self) -> int:
        return len(self._sha)

    def _hash(self, path: str, st: os.stat_result | None = None) -> tuple[str, int | None]:
        """(sha256, bytes read: None when the stat cache knew it)."""
        st = st or os.stat(path)
        if self.stat_cache is not None and (sha := self.stat_cache.get(path, st)) is not None:
            return sha, None
        sha = sha256_file(path)
        if self.stat_cache is not None and _stat_key(os.stat(path)) == _stat_key(st):
            self.stat_cache.put(path, st, sha)
        return sha, st.st_size

    def _count(self, size: int | None) -> None:
        if size is not None:
            self.read += 1
            self.bytes += size

    def sha256(self, path: str | Path) -> str:
        key = _key(path)
        if key not in self._sha:
            self._sha[key], size = self._hash(key)
            self._count(size)
        return self._sha[key]

    def prefetch(self, paths: Iterable[str | Path]) -> None:
        """Hash the not yet hashed, existing files of ``paths`` in parallel."""
        self.shas([_key(p) for p in paths])

    def shas(self, keys: list[str]) -> list[str | None]:
        """sha256 of each of ``keys`` (:func:`_key` paths; None: not a file). A file the stat
        cache knows costs one stat; the others are read, many at a time in a thread pool."""
        todo: dict[str, os.stat_result] = {}
        for key in keys:
            if key in self._sha or key in todo:
                continue
            try:
                st = os.stat(key)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            cached = self.stat_cache.get(key, st) if self.stat_cache is not None else None
            if cached is not None:
                self._sha[key] = cached
            else:
                todo[key] = st
        if todo:
            with ThreadPoolExecutor(min(self.workers, len(todo)),
                                    thread_name_prefix="audit-hash") as pool:
                for key, (sha, size) in zip(todo, pool.map(self._hash, todo, todo.values())):
                    self._sha[key] = sha
                    self._count(size)
        return [self._sha.get(key) for key in keys]

    def save(self) -> None:
        if self.stat_cache is not None:
            self.stat_cache.save()

    def tree(self, path: Path) -> dict[str, str]:
        """``{relative path: sha256}`` of a directory (as :func:`provenance.hash_artifact`)."""
        members = directory_files(path)
        self.prefetch(members)
        return {f.relative_to(path).as_posix(): self.sha256(f) for f in members}


@dataclass
class Node:
    """One line of the lineage tree: an artifact (with its record), a source, or a
    repeat of an artifact already shown above."""

    path: Path
    kind: str  # artifact | source | repeat | member-of | companions | unrecorded | folder
    rule: str | None = None
    record: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


class Auditor:
    """Checks artifacts against their records; remembers every file hashed and every
    artifact checked, so a whole results folder costs one pass."""

    def __init__(self, results_dir: str | Path = "results", deep: bool = True):
        self.results = norm(results_dir)
        self.hashes = HashCache(stat_cache=None if deep else StatCache(
            self.results.parent / ".cordflow" / "audit-cache.sqlite"))
        self.problems: dict[tuple[str, str], Problem] = {}
        self.records: dict[Path, dict[str, Any]] = {}  # artifact -> record (checked)
        self.sources: dict[Path, dict[str, Any]] = {}  # source path -> input entry
        self.by_artifact: dict[Path, list[Problem]] = {}  # artifact -> what fails its check
        self.damaged: set[Path] = set()  # artifacts whose own files fail their record
        self.repairs: dict[str, int] = {}  # command -> order (files first, then the rest)
        self._nodes: dict[Path, Node] = {}
        self._companions: dict[str, Path] | None = None  # companion file (_key) -> artifact
        self._companion_keys: dict[Path, list[str]] = {}  # artifact -> its companions (_key)

    # -- problems --------------------------------------------------------------------
    def _problem(self, node: Node | None, path: Path | str, kind: str, detail: str,
                 about: Path | None = None) -> None:
        """Record a problem on ``node`` (the tree line) and under ``about`` (the artifact
        whose check it fails: the file itself, or the job that read a changed input)."""
        p = Problem(shown(path), kind, detail)
        self.problems.setdefault((p.path, p.kind), p)
        if node is not None:
            node.problems.append(p)
        if about is None and node is not None and node.kind == "artifact":
            about = node.path
        if about is not None:
            self.by_artifact.setdefault(about, []).append(p)

    def problem_list(self) -> list[Problem]:
        return list(self.problems.values())

    # -- records ---------------------------------------------------------------------
    def _record(self, artifact: Path) -> dict[str, Any] | None:
        rp = record_path(artifact)
        if not rp.is_file():
            return None
        return read_record(rp)

    @staticmethod
    def record_base(artifact: Path, rec: dict[str, Any]) -> Path:
        """The working directory the job that wrote ``artifact`` ran in, as seen from where
        the artifact lies now: the paths in its record ``rec`` (inputs, outputs, companions)
        are relative to it (see :meth:`resolve`).

        A record names the artifact by the path the job wrote it at; when that path is
        relative and ``artifact`` ends with it, the base is what precedes it (so a results
        folder moved or copied elsewhere still resolves). Otherwise it is the recorded
        ``cwd`` (or, for an old record without one, the current directory)."""
        recorded = Path(os.path.normpath(rec["artifact"]))
        if not recorded.is_absolute():
            parts = recorded.parts
            if artifact.parts[-len(parts):] == parts:
                return Path(*artifact.parts[: len(artifact.parts) - len(parts)])
        return norm(rec.get("cwd") or os.getcwd())

    @staticmethod
    def resolve(base: Path, path: str) -> Path:
        """A path from a record (absolute, or relative to the job's working directory
        ``base``, from :meth:`record_base`) as a normalised absolute path."""
        p = Path(path)
        return norm(p if p.is_absolute() else base / p)

    def companion_keys(self, artifact: Path, rec: dict[str, Any]) -> list[str]:
        """The companion files ``rec`` lists for ``artifact``, as :func:`_key` paths (as
        :meth:`resolve`, in strings: a TTS shard lists thousands)."""
        if artifact not in self._companion_keys:
            base = str(self.record_base(artifact, rec))
            self._companion_keys[artifact] = [os.path.normpath(os.path.join(base, c["path"]))
                                              for c in rec.get("companions") or []]
        return self._companion_keys[artifact]

    def _under_results(self, path: Path) -> bool:
        return path == self.results or self.results in path.parents

    def owner(self, path: Path) -> tuple[Path, str | None] | None:
        """The recorded artifact that covers ``path`` and how: ``(path, None)`` for its own
        record, ``(dir, relpath)`` for a member of a directory artifact, ``(artifact,
        "companion")`` for a run-time file a job listed. None if no record covers it."""
        path = norm(path)
        if record_path(path).is_file():
            return path, None
        for parent in path.parents:
            if parent.name and record_path(parent).is_file():
                return parent, path.relative_to(parent).as_posix()
        owner = self.companion_index().get(str(path))
        return (owner, "companion") if owner is not None else None

    def companion_index(self) -> dict[str, Path]:
        """Companion file -> the artifact whose record lists it (records under the results
        folder, read once, only when needed)."""
        if self._companions is None:
            self._companions = {}
            if self.results.is_dir():
                for rp in sorted(self.results.rglob("*" + SUFFIX)):
                    artifact = rp.with_name(rp.name[: -len(SUFFIX)])
                    try:
                        rec = read_record(rp)
                    except ValueError:
                        continue  # reported when that artifact is checked
                    for key in self.companion_keys(artifact, rec):
                        self._companions.setdefault(key, artifact)
        return self._companions

    # -- checks ----------------------------------------------------------------------
    def artifact(self, path: str | Path) -> Node:
        """Check the artifact at ``path`` and (once) its whole lineage; its tree node."""
        path = norm(path)
        if path in self._nodes:
            first = self._nodes[path]
            return Node(path, "repeat", rule=first.rule, note="shown above")
        try:
            rec = self._record(path)
        except ValueError as e:
            node = Node(path, "unrecorded")
            self._nodes[path] = node
            self._problem(node, record_path(path), "bad-record", str(e).split(": ", 1)[-1])
            return node
        if rec is None:
            node = Node(path, "unrecorded")
            self._nodes[path] = node
            self._problem(node, path, "unrecorded",
                          f"no provenance record ({record_path(path).name}); rerun the rule "
                          "that writes it (cordflow stages write one on success)")
            return node
        node = Node(path, "artifact", rule=rec.get("rule"), record=rec)
        self._nodes[path] = node
        self.records[path] = rec
        base = self.record_base(path, rec)
        self._check_content(node, path, rec)
        self._check_companions(node, rec)
        for entry in rec.get("inputs") or []:
            node.children.append(self._check_input(node, path, base, entry))
        return node

    def _fix(self, path: Path, rec: dict[str, Any], stale: bool = False) -> str:
        """The advice for ``path`` (recorded by ``rec``; ``stale``: made from inputs that
        changed since), remembered in :attr:`repairs`; not stale: ``path`` is damaged."""
        command = repair_command(path, rec, self.record_base(path, rec), stale)
        self.repairs.setdefault(command, 1 if stale or rec.get("type") == "directory" else 0)
        if not stale:
            self.damaged.add(path)
        return f"rerun it: {command}"

    def _check_content(self, node: Node, path: Path, rec: dict[str, Any]) -> None:
        rule = rec.get("rule")

        def fix() -> str:
            return self._fix(path, rec)

        if not path.exists():
            self._problem(node, path, "missing", f"written by rule {rule} (record "
                          f"{record_path(path).name} is still there) but gone; {fix()}")
        elif rec.get("type") == "directory":
            if not path.is_dir():
                self._problem(node, path, "changed", "recorded as a directory, now a file; "
                              f"{fix()}")
                return
            recorded, now = rec.get("files") or {}, self.hashes.tree(path)
            for rel in sorted(recorded.keys() | now.keys()):
                member = path / rel
                if rel not in now:
                    self._problem(node, member, "missing", f"file of {shown(path)} (rule "
                                  f"{rule}) is gone; {fix()}")
                elif rel not in recorded:
                    self._problem(node, member, "unrecorded", f"file in {shown(path)} that its "
                                  f"record does not list (added after rule {rule} ran); {fix()}")
                elif recorded[rel] != now[rel]:
                    self._problem(node, member, "changed", f"sha256 {short(now[rel])} but rule "
                                  f"{rule} wrote {short(recorded[rel])}; {fix()}")
        elif not path.is_file():
            self._problem(node, path, "changed", f"recorded as a file, now a directory; {fix()}")
        else:
            now_sha = self.hashes.sha256(path)
            if now_sha != rec.get("sha256"):
                self._problem(node, path, "changed", f"sha256 {short(now_sha)} but rule {rule} "
                              f"wrote {short(rec.get('sha256'))}; {fix()}")

    def _check_companions(self, node: Node, rec: dict[str, Any]) -> None:
        companions = rec.get("companions") or []
        if not companions:
            return
        keys = self.companion_keys(node.path, rec)
        bad = 0
        rule = rec.get("rule")
        for c, key, sha in zip(companions, keys, self.hashes.shas(keys)):
            if sha is None:
                self._problem(node, key, "missing", f"run-time output of rule {rule} (listed "
                              f"in {record_path(node.path).name}) is gone; "
                              f"{self._fix(node.path, rec)}")
                bad += 1
            elif sha != c.get("sha256"):
                self._problem(node, key, "changed", f"sha256 {short(sha)} but rule {rule} "
                              f"recorded {short(c.get('sha256'))}; {self._fix(node.path, rec)}")
                bad += 1
        where = os.path.commonpath(keys)
        status = "all match" if not bad else f"{bad} differ"
        node.children.append(Node(norm(where), "companions",
                                  note=f"{len(keys)} run-time files, {status}"))

    def _check_input(self, node: Node, consumer: Path, base: Path,
                     entry: dict[str, Any]) -> Node:
        """The input's node; problems go on it (the consumer's own content may be fine)."""
        p = self.resolve(base, entry["path"])
        cov = self.owner(p)
        child = self._covered_child(p, cov) if cov is not None else Node(p, "source")
        made = f"{shown(consumer)} (rule {node.rule})"
        if not p.exists():
            # A covered input that is gone is reported by its own check.
            if cov is None:
                self._problem(child, p, "missing", f"input of {made} is gone",
                              about=consumer)
            return child
        if entry.get("type") == "directory":
            recorded = entry.get("files") or {}
            now = self.hashes.tree(p) if p.is_dir() else {}
            differ = sorted(k for k in recorded.keys() | now.keys()
                            if recorded.get(k) != now.get(k))
            what = (f"files {', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''} differ"
                    if p.is_dir() else "now a file")
        else:
            now_sha = self.hashes.sha256(p) if p.is_file() else None
            differ = now_sha != entry.get("sha256")
            what = (f"sha256 {short(now_sha)}, recorded {short(entry.get('sha256'))}"
                    if p.is_file() else "now a directory")
        if differ:
            held = cov[0] if cov is not None else None
            if held is not None and held in self.damaged:
                fix = (f"{shown(held)} is itself changed (see its own problem): repairing it "
                       f"repairs {shown(consumer)}")
            else:  # the input is what its own record says: the consumer is out of date
                fix = (f"bring {shown(consumer)} up to date: "
                       + self._fix(consumer, self.records[consumer], stale=True))
            self._problem(child, p, "changed", f"is not the version {made} was made from "
                          f"({what}); {fix}", about=consumer)
        if cov is None:
            if entry.get("record"):
                self._problem(child, p, "unrecorded", f"its record {entry['record']} (there "
                              f"when {made} ran) is gone", about=consumer)
            elif self._under_results(p):
                self._problem(child, p, "unrecorded", f"input of {made}, under the results "
                              f"folder {shown(self.results)}, that no provenance record "
                              "covers; rerun the rule that writes it", about=consumer)
            else:
                self.sources[p] = entry
        return child

    def _covered_child(self, p: Path, cov: tuple[Path, str | None]) -> Node:
        artifact, how = cov
        if how is None:
            return self.artifact(artifact)
        holder = self.artifact(artifact)
        label = "companion of" if how == "companion" else "file of"
        return Node(p, "member-of", rule=holder.rule, children=[holder],
                    note=f"{label} {shown(artifact)}")


@dataclass
class Report:
    root: Node
    problems: list[Problem]
    files_hashed: int
    bytes_hashed: int
    seconds: float
    auditor: Auditor
    # resume folders of unfinished or killed training jobs (skipped: not artifacts; a rerun
    # of the job resumes from them and removes them)
    resume_folders: list[Path] = field(default_factory=list)

    @classmethod
    def of(cls, root: Node, auditor: Auditor, t0: float) -> Report:
        auditor.hashes.save()
        return cls(root, auditor.problem_list(), auditor.hashes.read, auditor.hashes.bytes,
                   time.perf_counter() - t0, auditor)

    @property
    def commands(self) -> list[str]:
        """The repair commands of the problems, in the order to run them: the artifacts
        made again alone first, then those that rerun what was made from them."""
        repairs = self.auditor.repairs
        return sorted(repairs, key=lambda c: repairs[c])


# Snakemake's --max-checksum-file-size default: a file input up to this size is compared
# by content (the same bytes again: its consumers do not rerun), a larger one by time.
CHECKSUM_MAX_BYTES = 1_000_000


def repair_command(path: Path, rec: dict[str, Any], base: Path, stale: bool = False) -> str:
    """The Snakemake command that makes the artifact at ``path`` (recorded by ``rec``, its
    job run in ``base``) consistent again with the fewest jobs.

    A file that is changed or gone: ``snakemake --forcerun P -- P``, that job alone (its
    code and inputs are those of the run, so the same bytes come back and what was made
    from it stays valid; a file above Snakemake's checksum size would rerun its consumers
    on the next run, so they are rerun now). A folder (a model): ``snakemake --forcerun P``,
    its job and those made from it (Snakemake reruns them for the folder's new time
    anyway). ``stale``: ``path`` was made from inputs that changed since, so it and what
    was made from it rerun: ``snakemake --forcerun P``."""
    target = Path(os.path.normpath(rec.get("artifact") or path))
    if target.is_absolute() and base in target.parents:
        target = target.relative_to(base)
    quoted = shlex.quote(target.as_posix())
    alone = (not stale and rec.get("type") != "directory"
             and (rec.get("bytes") or 0) <= CHECKSUM_MAX_BYTES)
    command = (f"snakemake --forcerun {quoted} -- {quoted}" if alone
               else f"snakemake --forcerun {quoted}")
    if norm(base) != norm(os.getcwd()):
        command = f"cd {shlex.quote(str(base))} && {command}"
    return command


def results_of(path: str | Path) -> Path:
    """The results folder ``path`` lies in: its nearest ancestor named ``results``, else
    ``./results``."""
    path = norm(path)
    return next((p for p in path.parents if p.name == "results"), norm("results"))


def audit(path: str | Path, results_dir: str | Path | None = None,
          deep: bool = True) -> Report:
    """Check ``path`` (an artifact, its ``.prov.json``, a file inside a directory artifact
    or a run-time file a record lists) and its lineage back to the sources. Inputs under
    ``results_dir`` (default: :func:`results_of` ``path``) must be covered by a record.
    ``deep`` False: files whose stat is unchanged since an earlier audit are not re-read
    (:class:`StatCache`)."""
    t0 = time.perf_counter()
    path = norm(path)
    auditor = Auditor(results_dir if results_dir is not None else results_of(path), deep)
    if is_record(path):
        path = path.with_name(path.name[: -len(SUFFIX)])
    cov = auditor.owner(path)
    if cov is None:
        root = Node(path, "unrecorded")
        where = ("a workflow file no record covers" if auditor._under_results(path)
                 else f"not a workflow artifact (outside {shown(auditor.results)}, no record)")
        if not path.exists():
            where = "no such file, and no record for it"
        auditor._problem(root, path, "unrecorded" if path.exists() else "missing", where)
    else:
        root = auditor._covered_child(path, cov)
    return Report.of(root, auditor, t0)


def _walk_files(folder: Path, exclude: Iterable[str],
                resume: list[Path] | None = None) -> list[str]:
    """Every file under ``folder`` (:func:`_key` paths) but those matching ``exclude`` and
    those in training jobs' resume folders (:data:`cordflow.io.RESUME_DIR`: appended to
    ``resume``)."""
    patterns = list(exclude)
    top = str(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for d in [d for d in dirnames if RESUME_DIR.match(d)]:
            dirnames.remove(d)
            if resume is not None:
                resume.append(norm(os.path.join(dirpath, d)))
        dirnames.sort()
        for name in sorted(filenames):
            f = os.path.join(dirpath, name)
            rel = os.path.relpath(f, top) if patterns else ""
            if not any(fnmatch.fnmatch(rel, pat) for pat in patterns):
                out.append(f)
    return out


def audit_all_report(folder: str | Path = "results", exclude: Iterable[str] = (),
                     deep: bool = True) -> Report:
    """:func:`audit_all` with the figures (files hashed, time); ``deep`` as in
    :func:`audit`."""
    t0 = time.perf_counter()
    folder = norm(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audit --all: {folder} is not a folder")
    auditor = Auditor(folder, deep)
    resume: list[Path] = []
    files = _walk_files(folder, exclude, resume)
    root = Node(folder, "folder", note="every record under it")
    for rp in (f for f in files if f.endswith(SUFFIX)):
        root.children.append(auditor.artifact(rp[: -len(SUFFIX)]))
    covered: set[str] = set()
    for artifact, rec in auditor.records.items():
        covered.add(str(artifact))
        if rec.get("type") == "directory":
            names = [*(rec.get("files") or {}), *ENGINE_FILES]
            covered.update(_key(artifact / rel) for rel in names)
        covered.update(auditor.companion_keys(artifact, rec))
    for f in map(Path, (f for f in files if not f.endswith(SUFFIX) and f not in covered)):
        leftover = next((p for p in [f, *f.parents] if _TMP_LEFTOVER.match(p.name)), None)
        hint = (f"left by an interrupted job in {shown(leftover)} (safe to delete)"
                if leftover is not None else
                "no provenance record covers it (no sidecar, not in a recorded folder, not "
                "listed by any job); rerun the rule that writes it, or delete it if no rule does")
        auditor._problem(root, f, "unrecorded", hint)
    report = Report.of(root, auditor, t0)
    report.resume_folders = sorted(resume)
    return report


def audit_all(folder: str | Path = "results", exclude: Iterable[str] = ()) -> list[Problem]:
    """Every problem in ``folder``: each record checks out (artifact, companions and the
    whole lineage), and each file in it is covered by a record. ``exclude``: glob patterns
    (relative to ``folder``) of files to leave out, e.g. ``report.html``. Empty = clean."""
    return audit_all_report(folder, exclude).problems


# -- display ------------------------------------------------------------------------------
def _label(node: Node) -> str:
    from rich.markup import escape

    name = f"[bold]{escape(shown(node.path))}[/]"
    mark = "[green]ok[/]" if node.ok else "[red]" + escape(
        ", ".join(sorted({p.kind for p in node.problems}))) + "[/]"
    if node.kind == "artifact":
        rec = node.record or {}
        bits = [f"rule [cyan]{escape(str(node.rule))}[/]"]
        if rec.get("type") == "directory":
            bits.append(f"{len(rec.get('files') or {})} files")
        bits.append(f"sha256 {short(rec.get('sha256'))}")
        if rec.get("ended"):
            bits.append(escape(rec["ended"]))
        return f"{name}  {'  '.join(bits)}  {mark}"
    if node.kind == "source":
        return f"{name}  [magenta]source[/] (outside the results, no record needed)  {mark}"
    if node.kind == "repeat":
        return f"[dim]{escape(shown(node.path))}  (rule {node.rule}, {node.note})[/]"
    if node.kind == "companions":
        ok = "differ" not in node.note
        return (f"[dim]{escape(shown(node.path))}/…[/]  {escape(node.note)}  "
                + ("[green]ok[/]" if ok else "[red]changed[/]"))
    if node.kind == "folder":
        return f"{name}  [dim]{escape(node.note)}[/]  {mark}"
    if node.kind == "member-of":
        return f"{name}  [dim]{escape(node.note)}[/]  {mark}"
    return f"{name}  {mark}"


def tree(node: Node):
    """The lineage as a :class:`rich.tree.Tree` (repeated artifacts shown once)."""
    from rich.tree import Tree

    def build(n: Node, t: Tree) -> None:
        for child in n.children:
            build(child, t.add(_label(child)))

    root = Tree(_label(node))
    build(node, root)
    return root
