"""The SQLite results store (``docs/store.md``): crash-safe chunk commits, several writers, one file."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError
from robustarch.store._errors import StoreDamagedError, StoreFullError
from robustarch.store._hooks import pause_point
from robustarch.store._integrity import (
    FINGERPRINT_SQL,
    FP_BOOL_WEIGHTS,
    RunDamage,
    chunk_digest,
    chunk_fingerprint,
    damaged_file_message,
    file_check,
    record_problem,
    run_damage,
    run_fingerprint,
    summary_damage,
)
from robustarch.store._types import (
    EXAMPLE_FIELDS,
    FLAG_STATUSES,
    ExampleOutcome,
    Flag,
    RunKey,
    RunResult,
    canonical_json,
    wilson_interval,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
DEFAULT_STORE = "robustarch.sqlite"
# Opening a store runs SQLite's integrity_check for at most this long (about 5 ms per MiB measured, so
# stores up to a few hundred MiB are checked whole; ``docs/store.md``, "Integrity").
FILE_CHECK_SECONDS = 2.0
# A bounded write-ahead log: checkpointed every 256 pages (1 MiB) and cut back to 1 MiB after, so the space
# the store needs is its data plus about 1 MiB, and a disk that filled up holds little that is not yet in
# the main file (``docs/store.md``, "Disk full").
WAL_CHECKPOINT_PAGES = 256
WAL_LIMIT_BYTES = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    key_json TEXT NOT NULL,
    dataset TEXT NOT NULL, dataset_label TEXT NOT NULL, subset TEXT NOT NULL,
    model TEXT NOT NULL, model_family TEXT NOT NULL, method TEXT NOT NULL, params_count INTEGER NOT NULL,
    weights_hash TEXT NOT NULL, attack TEXT NOT NULL, attack_params TEXT NOT NULL, profile TEXT NOT NULL,
    seed INTEGER NOT NULL, dtype TEXT NOT NULL, device TEXT NOT NULL, n_planned INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL, adv_metric TEXT NOT NULL, meta TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, finished_at TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    run_id TEXT NOT NULL REFERENCES runs(run_id), chunk_index INTEGER NOT NULL, n INTEGER NOT NULL,
    seconds REAL, writer TEXT NOT NULL, committed_at TEXT NOT NULL, digest TEXT,
    fingerprint INTEGER, extras TEXT,
    PRIMARY KEY (run_id, chunk_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS examples (
    run_id TEXT NOT NULL REFERENCES runs(run_id), example_id INTEGER NOT NULL, chunk_index INTEGER NOT NULL,
    label INTEGER NOT NULL, clean_pred INTEGER NOT NULL, clean_correct1 INTEGER NOT NULL,
    clean_correct5 INTEGER NOT NULL, adv_pred INTEGER NOT NULL, adv_correct1 INTEGER NOT NULL,
    adv_correct5 INTEGER NOT NULL, linf REAL NOT NULL, l2 REAL NOT NULL, attacked INTEGER NOT NULL,
    PRIMARY KEY (run_id, example_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flags (
    run_id TEXT NOT NULL REFERENCES runs(run_id), check_name TEXT NOT NULL, status TEXT NOT NULL,
    value REAL, detail TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, check_name)
) WITHOUT ROWID;
"""

# schema version -> the statements that bring a store of that version to the next
_MIGRATIONS = {
    # 1 -> 2: what a chunk is committed with (``_integrity``); NULL for the chunks committed before
    1: ("ALTER TABLE chunks ADD COLUMN digest TEXT", "ALTER TABLE chunks ADD COLUMN fingerprint INTEGER"),
    # 2 -> 3: what an attack records about a chunk besides its outcomes (a cascade's contribution per stage)
    2: ("ALTER TABLE chunks ADD COLUMN extras TEXT",),
}

_KEY_FIELDS = tuple(f.name for f in fields(RunKey))
# an outcome's values in EXAMPLE_FIELDS order; dataclasses.astuple deep-copies every field and took 90% of
# commit_chunk's time
_outcome_values = attrgetter(*EXAMPLE_FIELDS)
_FILTERS = ("run_id", "dataset", "subset", "model", "attack", "profile", "weights_hash", "device", "dtype")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _writer() -> str:
    rank = os.environ.get("RANK")
    return f"{socket.gethostname()}:{os.getpid()}" + (f":rank{rank}" if rank is not None else "")


class Store:
    """One SQLite file of runs, per-example outcomes and reliability flags.

    WAL journal, one transaction per chunk: a crash (even ``kill -9``) leaves only whole chunks, and a
    re-run continues from the first chunk not committed. Several processes may write to one file; SQLite's
    lock serializes the (short) commits, and a busy writer waits up to ``timeout`` seconds. Opening runs
    SQLite's integrity_check on the file (``check=False`` skips it); :meth:`check_runs` checks every run's
    rows against its plan and :meth:`repair` removes what does not match (``docs/store.md``, "Integrity").
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_STORE, *, timeout: float = 120.0, check: bool = True
    ):
        self.path = Path(path)
        self._timeout = timeout
        if self.path.is_dir():
            raise RobustarchError(
                f"store path {self.path} is a directory; give a file such as {DEFAULT_STORE}"
            )
        if not self.path.parent.exists():
            raise RobustarchError(f"store folder {self.path.parent} does not exist")
        # Setting WAL on a new file needs a moment of exclusive access that the busy timeout does not cover:
        # processes opening a fresh store at once (torchrun ranks) retry it until ``timeout``.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._open(timeout)
                break
            except sqlite3.OperationalError as err:
                if getattr(self, "_db", None) is not None:
                    self._db.close()
                if is_disk_full(err):
                    raise StoreFullError(self._full_message(checkpointed=None)) from err
                if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() > deadline:
                    raise RobustarchError(f"cannot open results store {self.path}: {err}") from err
                time.sleep(0.05 + 0.1 * random.random())
            except sqlite3.DatabaseError as err:
                raise self._open_error(err) from err
        if check:
            self._check_on_open()

    def _open(self, timeout: float) -> None:
        # autocommit mode: every write below opens its own explicit transaction
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a committed chunk survives a process crash; only power loss may drop the
        # last commits, and then whole chunks, never part of one
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RobustarchError(
                f"store {self.path} has schema version {version}; this robustarch reads up to "
                f"{SCHEMA_VERSION}. Upgrade robustarch."
            )
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        # executescript would commit the open transaction: run the statements one by one
        with self._transaction():
            # read again under the write lock: another process may have migrated the file meanwhile
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                statements: Sequence[str] = list(filter(str.strip, _SCHEMA.split(";")))
            else:
                statements = [s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS[v]]
            for statement in statements:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _check_on_open(self) -> None:
        if str(self.path) == ":memory:":
            return
        try:
            problems, finished = file_check(self._db, FILE_CHECK_SECONDS)
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise self._open_error(err) from err
        if problems:
            self._db.close()
            raise StoreDamagedError(damaged_file_message(self.path, problems))
        if not finished:
            log.info(
                "store %s: SQLite's integrity check stopped after %.0f s (a large file); `robustarch store "
                "check` checks it whole",
                self.path,
                FILE_CHECK_SECONDS,
            )

    def _open_error(self, err: sqlite3.DatabaseError) -> RobustarchError:
        if is_corrupt(err):  # (a file that is no SQLite database at all is "cannot open")
            return StoreDamagedError(damaged_file_message(self.path, [str(err)]))
        return RobustarchError(f"cannot open results store {self.path}: {err}")

    # -- plumbing -----------------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction: the queries inside see one state of the file, whatever other processes
        commit meanwhile (a check must not see a chunk row without its example rows)."""
        outer = not self._db.in_transaction  # inside a write transaction, which is a snapshot too
        try:
            if outer:
                self._db.execute("BEGIN")
            yield
            if outer:
                self._db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            if outer and self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if is_corrupt(err):
                raise StoreDamagedError(damaged_file_message(self.path, [str(err)])) from err
            raise

    def _disk_full(self, err: sqlite3.OperationalError) -> StoreFullError:
        """After a write failed for lack of space (and was rolled back): copy the write-ahead log into the
        main file and empty it, so the space it held is free and nothing waits in it; then the error."""
        self._db.execute("PRAGMA busy_timeout=1000")  # never wait long for other writers here
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            checkpointed = not busy
        except sqlite3.OperationalError:  # the main file could not grow either
            checkpointed = False
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        log.debug("store %s: disk full (%s); WAL checkpointed: %s", self.path, err, checkpointed)
        return StoreFullError(self._full_message(checkpointed))

    def _full_message(self, checkpointed: bool | None) -> str:
        folder = self.path.parent
        free = shutil.disk_usage(folder).free
        wal = Path(f"{self.path}-wal")
        pending = wal.stat().st_size if wal.exists() else 0
        if checkpointed:
            state = "; its write-ahead log was copied into the store and emptied"
        elif pending:
            state = (
                f"; its write-ahead log ({_mib(pending)}) still holds committed chunks that are copied into "
                "the store file on the next write, which needs about that much free space"
            )
        else:
            state = ""
        return (
            f"results store {self.path}: the disk is full ({_mib(free)} free in {folder}), or the store "
            f"reached its size limit. Nothing committed is lost: the write in progress was rolled back"
            f"{state}. Free some space (or move the store to a larger disk) and run the same command again: "
            "it continues from the first chunk not committed."
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------
    def begin_run(self, key: RunKey, meta: dict[str, Any] | None = None) -> str:
        """Register a run (idempotent: an existing run keeps its first ``meta``) and return its id."""
        run_id = key.run_id
        values = {f: getattr(key, f) for f in _KEY_FIELDS}
        values["attack_params"] = canonical_json(key.attack_params)
        row = {
            "run_id": run_id,
            "key_json": canonical_json(key.identity()),
            **values,
            "meta": canonical_json(meta or {}),
            "created_at": _now(),
        }
        cols = ", ".join(row)
        marks = ", ".join(f":{c}" for c in row)
        with self._transaction():
            self._db.execute(f"INSERT OR IGNORE INTO runs ({cols}) VALUES ({marks})", row)
        return run_id

    def _key(self, run_id: str) -> RunKey:
        row = self._db.execute(
            f"SELECT {', '.join(_KEY_FIELDS)} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise RobustarchError(f"no run {run_id!r} in store {self.path}")
        values = dict(zip(_KEY_FIELDS, row, strict=True))
        values["attack_params"] = json.loads(values["attack_params"])
        return RunKey(**values)

    def committed_chunks(self, run_id: str) -> set[int]:
        with self._snapshot():
            rows = self._db.execute("SELECT chunk_index FROM chunks WHERE run_id = ?", (run_id,))
            return {r[0] for r in rows}

    def commit_chunk(
        self,
        run_id: str,
        chunk_index: int,
        outcomes: Sequence[ExampleOutcome],
        *,
        seconds: float | None = None,
        extras: dict[str, Any] | None = None,
    ) -> bool:
        """Write one chunk's outcomes in one transaction. Idempotent: a chunk already committed is left as
        it is (and False returned); a different outcome for it is logged, since runs are deterministic.
        ``extras``: what the attack records about the chunk besides its outcomes (JSON; e.g. how many
        examples each stage of a cascade broke), read back with :meth:`chunk_extras`."""
        key = self._key(run_id)
        if not 0 <= chunk_index < key.n_chunks:
            raise RobustarchError(f"chunk {chunk_index} outside run {run_id} (0..{key.n_chunks - 1})")
        start, stop = key.chunk_bounds(chunk_index)
        if len(outcomes) != stop - start:
            raise RobustarchError(
                f"chunk {chunk_index} of run {run_id} needs {stop - start} outcomes, got {len(outcomes)}"
            )
        values = [_outcome_values(o) for o in outcomes]
        try:
            digest, fingerprint = chunk_digest(values), chunk_fingerprint(values, chunk_index)
        except (struct.error, TypeError) as err:
            raise RobustarchError(
                f"chunk {chunk_index} of run {run_id}: an outcome field has the wrong type ({err})"
            ) from err
        rows = [(run_id, chunk_index, *v) for v in values]
        cols = ", ".join(("run_id", "chunk_index", *EXAMPLE_FIELDS))
        with self._transaction():
            exists = self._db.execute(
                "SELECT digest FROM chunks WHERE run_id = ? AND chunk_index = ?", (run_id, chunk_index)
            ).fetchone()
            if exists:
                if not self._same_outcomes(run_id, chunk_index, exists[0], digest, outcomes):
                    log.warning(
                        "run %s chunk %d was already committed with different outcomes; kept the stored "
                        "ones (a nondeterministic model or attack?)",
                        run_id,
                        chunk_index,
                    )
                return False
            self._db.executemany(
                f"INSERT INTO examples ({cols}) VALUES ({', '.join('?' * (2 + len(EXAMPLE_FIELDS)))})", rows
            )
            self._db.execute(
                "INSERT INTO chunks (run_id, chunk_index, n, seconds, writer, committed_at, digest, "
                "fingerprint, extras) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    chunk_index,
                    len(outcomes),
                    seconds,
                    _writer(),
                    _now(),
                    digest,
                    fingerprint,
                    None if extras is None else canonical_json(extras),
                ),
            )
            pause_point("mid-commit")
        return True

    def _same_outcomes(
        self,
        run_id: str,
        chunk_index: int,
        stored_digest: str | None,
        digest: str,
        outcomes: Sequence[ExampleOutcome],
    ) -> bool:
        if stored_digest is not None:
            return stored_digest == digest
        # committed by schema 1, which kept no digest: compare the rows themselves
        return self._examples(run_id, chunk_index) == sorted(outcomes, key=attrgetter("example_id"))

    def finish_run(self, run_id: str) -> bool:
        """Mark a run complete once all its chunks are committed; returns whether it is complete."""
        key = self._key(run_id)
        with self._transaction():
            n_chunks, n = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM chunks WHERE run_id = :r), "
                "(SELECT COUNT(*) FROM examples WHERE run_id = :r)",
                {"r": run_id},
            ).fetchone()
            if n_chunks != key.n_chunks or n != key.n_planned:
                return False
            self._db.execute(
                "UPDATE runs SET complete = 1, finished_at = COALESCE(finished_at, ?) WHERE run_id = ?",
                (_now(), run_id),
            )
        return True

    def add_flag(self, run_id: str, check: str, status: str, value: float | None, detail: str) -> None:
        """Store a reliability check's verdict on a run; a later verdict of the same check replaces it."""
        if status not in FLAG_STATUSES:
            raise RobustarchError(f"flag status must be one of {FLAG_STATUSES}, got {status!r}")
        self._key(run_id)
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO flags (run_id, check_name, status, value, detail, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, check, status, None if value is None else float(value), detail, _now()),
            )

    # -- reading --------------------------------------------------------------------------------------
    def _examples(self, run_id: str, chunk_index: int | None = None) -> list[ExampleOutcome]:
        sql = f"SELECT {', '.join(EXAMPLE_FIELDS)} FROM examples WHERE run_id = ?"
        args: tuple[Any, ...] = (run_id,)
        if chunk_index is not None:
            sql += " AND chunk_index = ?"
            args += (chunk_index,)
        out = []
        for r in self._db.execute(sql + " ORDER BY example_id", args):
            label, cp, c1, c5, ap, a1, a5 = r[1:8]
            out.append(
                ExampleOutcome(
                    r[0], label, cp, bool(c1), bool(c5), ap, bool(a1), bool(a5), r[8], r[9], bool(r[10])
                )
            )
        return out

    def examples(self, run_id: str) -> list[ExampleOutcome]:
        """The run's per-example outcomes, ordered by example id."""
        with self._snapshot():
            self._key(run_id)
            return self._examples(run_id)

    def flags(self, run_id: str) -> list[Flag]:
        with self._snapshot():
            rows = self._db.execute(
                "SELECT check_name, status, value, detail FROM flags WHERE run_id = ? ORDER BY check_name",
                (run_id,),
            )
            return [Flag(*r) for r in rows]

    def results(self, *, check: bool = True, **filters: Any) -> list[RunResult]:
        """Runs with aggregates computed from the stored outcomes. Filters: ``complete`` (bool) and any of
        run_id, dataset, subset, model, attack, profile, weights_hash, device, dtype (a value or a list).

        Each run is checked against what its chunks committed (row counts, plan bounds, the fingerprint of
        its integers; :meth:`check_runs` checks deeper): a damaged run has ``damage`` set and its numbers
        must not be shown. ``check=False`` skips that."""
        where, args = [], []
        for name, value in filters.items():
            if name == "complete":
                if value is not None:
                    where.append("r.complete = ?")
                    args.append(int(bool(value)))
                continue
            if name not in _FILTERS:
                known = ", ".join(("complete", *_FILTERS))
                raise RobustarchError(f"unknown results filter {name!r}; known: {known}")
            values = [value] if isinstance(value, str | int) else list(value)
            where.append(f"r.{name} IN ({', '.join('?' * len(values))})")
            args.extend(values)
        sql = f"""
            SELECT r.run_id, r.key_json, COALESCE(SUM({FINGERPRINT_SQL if check else 0}), 0),
                   {", ".join("r." + f for f in _KEY_FIELDS)}, r.meta, r.complete, r.created_at,
                   r.finished_at,
                   COUNT(e.example_id), COALESCE(SUM(e.clean_correct1), 0),
                   COALESCE(SUM(e.clean_correct5), 0),
                   COALESCE(SUM(e.adv_correct1), 0), COALESCE(SUM(e.adv_correct5), 0),
                   COALESCE(SUM(e.clean_correct1 AND NOT e.adv_correct1), 0),
                   COALESCE(MAX(e.linf), 0), COALESCE(AVG(e.linf), 0), COALESCE(MAX(e.l2), 0),
                   COALESCE(AVG(e.l2), 0), COALESCE(SUM(e.attacked), 0)
            FROM runs r LEFT JOIN examples e ON e.run_id = r.run_id
            {"WHERE " + " AND ".join(where) if where else ""}
            GROUP BY r.run_id ORDER BY r.dataset, r.model, r.attack, r.created_at, r.run_id
        """
        with self._snapshot():
            rows = self._db.execute(sql, args).fetchall()
            chunks = self._chunk_summaries([r[0] for r in rows]) if check else {}
            out = []
            for run_id, key_json, fingerprint, *row in rows:
                damage = self._summary_damage(run_id, key_json, fingerprint, row, chunks) if check else None
                out.append(_result([run_id, *row], self.flags(run_id), damage))
            return out

    def _chunk_summaries(self, run_ids: list[str]) -> dict[str, dict[int, tuple[int, int | None]]]:
        """{run_id: {chunk index: (n, fingerprint)}} of the runs' chunk rows (one small row per chunk)."""
        sql = "SELECT run_id, chunk_index, n, fingerprint FROM chunks"
        if len(run_ids) <= 100:  # a few runs (study status asks run by run): their rows, not every run's
            sql += f" WHERE run_id IN ({', '.join('?' * len(run_ids))})"
        out: dict[str, dict[int, tuple[int, int | None]]] = {}
        for run_id, c, n, fp in self._db.execute(sql, run_ids if len(run_ids) <= 100 else ()):
            out.setdefault(run_id, {})[c] = (n, fp)
        return out

    def _summary_damage(
        self,
        run_id: str,
        key_json: str,
        fingerprint: int,
        row: Sequence[Any],
        chunks: dict[str, dict[int, tuple[int, int | None]]],
    ) -> RunDamage | None:
        k = len(_KEY_FIELDS)
        values = dict(zip(_KEY_FIELDS, row[:k], strict=True))
        meta, complete, n_rows = row[k], bool(row[k + 1]), row[k + 4]
        # the aggregate's sums of clean_correct1, clean_correct5, adv_correct1, adv_correct5 and attacked
        bools = dict(zip(FP_BOOL_WEIGHTS, [*row[k + 5 : k + 9], row[-1]], strict=True))
        key, problem = record_problem(run_id, key_json, values, meta)
        if key is None:
            return RunDamage(run_id, complete, record=problem)
        whole = run_fingerprint(fingerprint, bools)
        return summary_damage(run_id, key, complete, chunks.get(run_id, {}), n_rows, whole)

    def result(self, run_id: str) -> RunResult:
        found = self.results(run_id=run_id)
        if not found:
            raise RobustarchError(f"no run {run_id!r} in store {self.path}")
        return found[0]

    # -- integrity (docs/store.md, "Integrity") -----------------------------------------------------------
    def check_file(self, max_seconds: float | None = None) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` of the file's pages (every b-tree page read and checked):
        the problems it reports (at most 20), ``[]`` when the file passes. ``max_seconds`` stops it early."""
        try:
            return file_check(self._db, max_seconds)[0]
        except sqlite3.DatabaseError as err:
            return [str(err)]

    def check_runs(self, run_ids: Iterable[str] | None = None) -> list[RunDamage]:
        """Check every run's (or the given runs') stored rows against its plan; returns the damaged runs.

        Per run: its record hashes to its id; per chunk: its index is in the plan, it committed as many
        outcomes as its bounds hold, it has that many example rows, and they have the digest it was
        committed with; a run marked complete has all its chunks. Reads every example row once."""
        with self._snapshot():
            return [d for r in self._records(run_ids) if (d := self._damage(*r)) is not None]

    def repair(self, run_id: str | None = None) -> list[RunDamage]:
        """Remove what :meth:`check_runs` finds damaged in one run (or in every run), so the engine computes
        it again: a damaged chunk's rows are deleted (``committed_chunks`` lacks it), the run's
        ``complete`` mark and flags are cleared, and a run whose own record is damaged is deleted whole.
        Returns what was repaired ([] when nothing was damaged)."""
        with self._transaction():  # under the write lock: nothing is committed between check and delete
            records = self._records(None if run_id is None else [run_id])
            if run_id is not None and not records:
                raise RobustarchError(f"no run {run_id!r} in store {self.path}")
            damages = []
            for record in records:
                if (damage := self._damage(*record)) is not None:
                    damages.append(damage)
                    self._remove_all(damage)
        for d in damages:
            log.warning("store %s: repaired %s", self.path, d.describe())
        return damages

    def _records(self, run_ids: Iterable[str] | None) -> list[tuple[Any, ...]]:
        """(run_id, key_json, meta, complete, key values) of the given runs (all when None)."""
        sql = f"SELECT run_id, key_json, meta, complete, {', '.join(_KEY_FIELDS)} FROM runs"
        if run_ids is None:
            return self._db.execute(sql + " ORDER BY run_id").fetchall()
        return [r for i in dict.fromkeys(run_ids) for r in self._db.execute(sql + " WHERE run_id = ?", (i,))]

    def _damage(self, run_id: str, key_json: str, meta: str, complete: int, *values: Any) -> RunDamage | None:
        key, problem = record_problem(run_id, key_json, dict(zip(_KEY_FIELDS, values, strict=True)), meta)
        if key is None:
            return RunDamage(run_id, bool(complete), record=problem)
        chunks, rows = self._chunk_rows(run_id)
        return run_damage(run_id, key, bool(complete), chunks, rows)

    def _chunk_rows(self, run_id: str) -> tuple[dict[int, tuple[int, str | None]], dict[int, list[tuple]]]:
        """A run's chunk rows {index: (n, digest)} and its outcome rows grouped by their chunk index."""
        chunks = {
            c: (n, d)
            for c, n, d in self._db.execute(
                "SELECT chunk_index, n, digest FROM chunks WHERE run_id = ?", (run_id,)
            )
        }
        rows: dict[int, list[tuple]] = {}
        for row in self._db.execute(
            f"SELECT chunk_index, {', '.join(EXAMPLE_FIELDS)} FROM examples WHERE run_id = ?", (run_id,)
        ):
            rows.setdefault(row[0], []).append(row[1:])
        return chunks, rows

    def _remove_all(self, damage: RunDamage) -> None:
        """Remove a run's damage until its check passes: where a flipped bit duplicated a key, one DELETE
        pass leaves a row behind (SQLite's cursor steps over the twin), and the next pass takes it."""
        for _ in range(4):
            self._remove(damage)
            if damage.record is not None:
                return
            [record] = self._records([damage.run_id])
            if (again := self._damage(*record)) is None:
                return
            damage = again
        raise RobustarchError(f"store {self.path}: cannot repair {damage.describe()}; salvage it instead")

    def _remove(self, damage: RunDamage) -> None:
        run_id = damage.run_id
        if damage.record is not None:
            for table in ("examples", "chunks", "flags", "runs"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            return
        for c in damage.chunks:
            for table in ("examples", "chunks"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id = ? AND chunk_index = ?", (run_id, c))
        self._db.execute("UPDATE runs SET complete = 0, finished_at = NULL WHERE run_id = ?", (run_id,))
        self._db.execute("DELETE FROM flags WHERE run_id = ?", (run_id,))

    def chunk_extras(self, run_id: str) -> dict[int, dict[str, Any]]:
        """Per committed chunk of ``run_id``, what its attack recorded besides the outcomes (``{}`` where it
        recorded nothing)."""
        rows = self._db.execute(
            "SELECT chunk_index, extras FROM chunks WHERE run_id = ? AND extras IS NOT NULL", (run_id,)
        )
        return {c: json.loads(e) for c, e in rows}

    def chunk_seconds(self, run_ids: Iterable[str] | None = None) -> list[tuple[int, float]]:
        """(examples, seconds) of committed chunks that recorded their compute time (ETAs, benchmarks)."""
        rows = self._db.execute("SELECT run_id, n, seconds FROM chunks WHERE seconds IS NOT NULL").fetchall()
        wanted = None if run_ids is None else set(run_ids)
        return [(n, s) for r, n, s in rows if wanted is None or r in wanted]


def _result(row: Sequence[Any], flags: list[Flag], damage: RunDamage | None) -> RunResult:
    """A RunResult from one row of the aggregate query in :meth:`Store.results`."""
    run_id, rest = row[0], row[1:]
    key = dict(zip(_KEY_FIELDS, rest[: len(_KEY_FIELDS)], strict=True))
    meta, complete, created, finished, n, c1, c5, a1, a5, broken = rest[len(_KEY_FIELDS) : -5]
    lmax, lmean, l2max, l2mean, att = rest[-5:]

    def frac(k: int) -> float:
        return k / n if n else float("nan")

    return RunResult(
        run_id=run_id,
        **{**key, "attack_params": _json_or_empty(key["attack_params"])},
        meta=_json_or_empty(meta),
        n=n,
        complete=bool(complete),
        clean_top1=frac(c1),
        clean_top5=frac(c5),
        adv_top1=frac(a1),
        adv_top5=frac(a5),
        clean_top1_ci=wilson_interval(c1, n),
        clean_top5_ci=wilson_interval(c5, n),
        adv_top1_ci=wilson_interval(a1, n),
        adv_top5_ci=wilson_interval(a5, n),
        clean_top1_count=c1,
        clean_top5_count=c5,
        adv_top1_count=a1,
        adv_top5_count=a5,
        attack_success_rate=broken / c1 if c1 else float("nan"),
        linf_max=lmax,
        linf_mean=lmean,
        l2_max=l2max,
        l2_mean=l2mean,
        n_attacked=att,
        created_at=created,
        finished_at=finished,
        flags=flags,
        damage=None if damage is None else damage.describe(),
    )


def _json_or_empty(text: str) -> Any:
    """Stored JSON; {} where a damaged record's JSON does not parse (``RunResult.damage`` then says so)."""
    try:
        return json.loads(text)
    except ValueError:
        return {}


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): takes the write lock up front, so two
    writers never deadlock upgrading a read lock. A write that fails for lack of disk space is rolled back
    and raised as :class:`StoreFullError`, never as a raw sqlite3 error."""

    def __init__(self, store: Store):
        self._store = store
        self._db = store._db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as err:
                self._failed(err)
                raise
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        # SQLite may already have rolled the transaction back itself (it does on some SQLITE_FULL errors)
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and is_disk_full(exc):
            raise self._store._disk_full(exc) from exc
        if isinstance(exc, sqlite3.DatabaseError) and is_corrupt(exc):
            raise StoreDamagedError(damaged_file_message(self._store.path, [str(exc)])) from exc


def is_disk_full(err: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL: the disk (or the connection's ``max_page_count``) has no room for the write."""
    code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
    return code == sqlite3.SQLITE_FULL if code is not None else "database or disk is full" in str(err)


def is_corrupt(err: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT: pages the b-tree code could not read."""
    code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_CORRUPT
    return "malformed" in str(err)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
