"""Salvage: copy what is intact in a damaged store file into a new one (``docs/store.md``, "Integrity").

When SQLite's own check finds the file's pages damaged, deleting rows in place could spread the damage, so
nothing is written to that file: it is opened read-only, every run is read and checked chunk by chunk
(``_integrity.run_damage``), and only the chunks that pass are copied, with their run's record, into a fresh
store. A run copied whole keeps its ``complete`` mark and flags; a run that lost chunks is copied without
them, so a study run against the new store computes exactly what was lost.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import fields
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError
from robustarch.store._integrity import RunDamage, chunk_digest, chunk_fingerprint, record_problem, run_damage
from robustarch.store._sqlite import Store
from robustarch.store._types import EXAMPLE_FIELDS, RunKey

log = logging.getLogger(__name__)

_CHUNK_COLUMNS = ("chunk_index", "n", "seconds", "writer", "committed_at")


def salvage(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> list[RunDamage]:
    """Copy the intact runs and chunks of store ``source`` into a new store ``target`` (which must not
    exist); ``source`` is only read. Returns what was left behind, one :class:`RunDamage` per run."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise RobustarchError(f"no store file {source}")
    if target.exists():
        raise RobustarchError(f"{target} exists; give salvage a new file to write")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        runs = _read(src, "SELECT * FROM runs ORDER BY run_id", ())
        if runs is None:
            raise RobustarchError(f"store {source}: its table of runs cannot be read; nothing to salvage")
        columns, records = runs
        left = []
        with Store(target) as dst:
            for record in records:
                damage = _copy_run(src, dst, dict(zip(columns, record, strict=True)))
                if damage is not None:
                    left.append(damage)
    finally:
        src.close()
    log.info(
        "salvaged %d of %d runs whole from %s into %s", len(records) - len(left), len(records), source, target
    )
    return left


def _read(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple]] | None:
    """(column names, rows) of a query, or None where SQLite cannot read the pages it needs."""
    try:
        cursor = db.execute(sql, args)
        rows = cursor.fetchall()
    except sqlite3.DatabaseError as err:
        log.debug("unreadable: %s (%s)", sql, err)
        return None
    return [d[0] for d in cursor.description], rows


def _copy_run(src: sqlite3.Connection, dst: Store, run: dict[str, Any]) -> RunDamage | None:
    """Copy one run's intact chunks into ``dst``; returns what was left behind (None: the run whole)."""
    run_id, complete = run["run_id"], bool(run["complete"])
    key, problem = record_problem(
        run_id, run["key_json"], {f.name: run[f.name] for f in fields(RunKey)}, run["meta"]
    )
    if key is None:
        return RunDamage(run_id, complete, record=problem)
    read = _read_run(src, run_id)
    if read is None:
        return RunDamage(run_id, complete, record="its rows cannot be read")
    chunks, rows, flags = read
    damage = run_damage(
        run_id, key, complete, {c: (r["n"], r.get("digest")) for c, r in chunks.items()}, rows
    )
    whole = damage is None
    with dst._transaction() as db:
        finished = run["finished_at"] if whole else None
        _insert(db, "runs", {**run, "complete": int(complete and whole), "finished_at": finished})
        for c, chunk in chunks.items():
            if damage is None or c not in damage.chunks:
                _insert_chunk(db, run_id, c, chunk, rows.get(c, []))
        for flag in flags if whole else []:  # flags of a run that lost chunks were computed from them
            _insert(db, "flags", flag)
    return damage


def _read_run(
    src: sqlite3.Connection, run_id: str
) -> tuple[dict[int, dict[str, Any]], dict[int, list[tuple]], list[dict[str, Any]]] | None:
    """A run's chunk rows by index, outcome rows by chunk index, and flag rows; None if unreadable."""
    chunks = _read(src, "SELECT * FROM chunks WHERE run_id = ?", (run_id,))
    examples = _read(
        src, f"SELECT chunk_index, {', '.join(EXAMPLE_FIELDS)} FROM examples WHERE run_id = ?", (run_id,)
    )
    flags = _read(src, "SELECT * FROM flags WHERE run_id = ?", (run_id,))
    if chunks is None or examples is None or flags is None:
        return None
    by_index = {r["chunk_index"]: r for r in (dict(zip(chunks[0], v, strict=True)) for v in chunks[1])}
    rows: dict[int, list[tuple]] = {}
    for r in examples[1]:
        rows.setdefault(r[0], []).append(r[1:])
    return by_index, rows, [dict(zip(flags[0], v, strict=True)) for v in flags[1]]


def _insert_chunk(
    db: sqlite3.Connection, run_id: str, c: int, chunk: dict[str, Any], rows: list[tuple]
) -> None:
    # digest and fingerprint from the rows, which passed the check (a schema-1 source kept neither)
    _insert(
        db,
        "chunks",
        {
            "run_id": run_id,
            **{k: chunk[k] for k in _CHUNK_COLUMNS},
            "digest": chunk_digest(rows),
            "fingerprint": chunk_fingerprint(rows, c),
        },
    )
    db.executemany(
        f"INSERT INTO examples (run_id, chunk_index, {', '.join(EXAMPLE_FIELDS)}) "
        f"VALUES ({', '.join('?' * (2 + len(EXAMPLE_FIELDS)))})",
        [(run_id, c, *v) for v in rows],
    )


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    db.execute(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
    )
