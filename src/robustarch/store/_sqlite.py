"""The SQLite results store (``docs/store.md``): crash-safe chunk commits, several writers, one file."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError
from robustarch.store._errors import StoreFullError
from robustarch.store._hooks import pause_point
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

SCHEMA_VERSION = 1
DEFAULT_STORE = "robustarch.sqlite"
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
    seconds REAL, writer TEXT NOT NULL, committed_at TEXT NOT NULL,
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
    lock serializes the (short) commits, and a busy writer waits up to ``timeout`` seconds.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE, *, timeout: float = 120.0):
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
                return
            except sqlite3.OperationalError as err:
                if getattr(self, "_db", None) is not None:
                    self._db.close()
                if is_disk_full(err):
                    raise StoreFullError(self._full_message(checkpointed=None)) from err
                if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() > deadline:
                    raise RobustarchError(f"cannot open results store {self.path}: {err}") from err
                time.sleep(0.05 + 0.1 * random.random())
            except sqlite3.DatabaseError as err:
                raise RobustarchError(f"cannot open results store {self.path}: {err}") from err

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
            # executescript would commit the open transaction: run the statements one by one
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- plumbing -----------------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self)

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
        rows = self._db.execute("SELECT chunk_index FROM chunks WHERE run_id = ?", (run_id,))
        return {r[0] for r in rows}

    def commit_chunk(
        self,
        run_id: str,
        chunk_index: int,
        outcomes: Sequence[ExampleOutcome],
        *,
        seconds: float | None = None,
    ) -> bool:
        """Write one chunk's outcomes in one transaction. Idempotent: a chunk already committed is left as
        it is (and False returned); a different outcome for it is logged, since runs are deterministic."""
        key = self._key(run_id)
        if not 0 <= chunk_index < key.n_chunks:
            raise RobustarchError(f"chunk {chunk_index} outside run {run_id} (0..{key.n_chunks - 1})")
        start, stop = key.chunk_bounds(chunk_index)
        if len(outcomes) != stop - start:
            raise RobustarchError(
                f"chunk {chunk_index} of run {run_id} needs {stop - start} outcomes, got {len(outcomes)}"
            )
        rows = [(run_id, chunk_index, *_outcome_values(o)) for o in outcomes]
        cols = ", ".join(("run_id", "chunk_index", *EXAMPLE_FIELDS))
        with self._transaction():
            exists = self._db.execute(
                "SELECT 1 FROM chunks WHERE run_id = ? AND chunk_index = ?", (run_id, chunk_index)
            ).fetchone()
            if exists:
                stored = self._examples(run_id, chunk_index)
                if stored != list(outcomes):
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
                "INSERT INTO chunks (run_id, chunk_index, n, seconds, writer, committed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, chunk_index, len(outcomes), seconds, _writer(), _now()),
            )
            pause_point("mid-commit")
        return True

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
        self._key(run_id)
        return self._examples(run_id)

    def flags(self, run_id: str) -> list[Flag]:
        rows = self._db.execute(
            "SELECT check_name, status, value, detail FROM flags WHERE run_id = ? ORDER BY check_name",
            (run_id,),
        )
        return [Flag(*r) for r in rows]

    def results(self, **filters: Any) -> list[RunResult]:
        """Runs with aggregates computed from the stored outcomes. Filters: ``complete`` (bool) and any of
        run_id, dataset, subset, model, attack, profile, weights_hash, device, dtype (a value or a list)."""
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
            SELECT r.run_id, {", ".join("r." + f for f in _KEY_FIELDS)}, r.meta, r.complete, r.created_at,
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
        out = []
        for row in self._db.execute(sql, args).fetchall():
            run_id, rest = row[0], row[1:]
            key = dict(zip(_KEY_FIELDS, rest[: len(_KEY_FIELDS)], strict=True))
            key["attack_params"] = json.loads(key["attack_params"])
            meta, complete, created, finished, n, c1, c5, a1, a5, broken = rest[len(_KEY_FIELDS) : -5]
            lmax, lmean, l2max, l2mean, att = rest[-5:]

            def frac(k: int, n: int = n) -> float:
                return k / n if n else float("nan")

            out.append(
                RunResult(
                    run_id=run_id,
                    **key,
                    meta=json.loads(meta),
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
                    flags=self.flags(run_id),
                )
            )
        return out

    def result(self, run_id: str) -> RunResult:
        found = self.results(run_id=run_id)
        if not found:
            raise RobustarchError(f"no run {run_id!r} in store {self.path}")
        return found[0]

    def chunk_seconds(self, run_ids: Iterable[str] | None = None) -> list[tuple[int, float]]:
        """(examples, seconds) of committed chunks that recorded their compute time (ETAs, benchmarks)."""
        rows = self._db.execute("SELECT run_id, n, seconds FROM chunks WHERE seconds IS NOT NULL").fetchall()
        wanted = None if run_ids is None else set(run_ids)
        return [(n, s) for r, n, s in rows if wanted is None or r in wanted]


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


def is_disk_full(err: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL: the disk (or the connection's ``max_page_count``) has no room for the write."""
    code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
    return code == sqlite3.SQLITE_FULL if code is not None else "database or disk is full" in str(err)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
