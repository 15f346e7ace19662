"""Integrity of the results store (``docs/store.md``, "Integrity"): what a chunk is committed with, the
checks of each run's stored rows against its plan, and SQLite's own check of the file's pages.

A run's plan is its :class:`RunKey`: ``n_chunks`` chunks, chunk ``i`` holding the examples at positions
``chunk_bounds(i)``. Each ``chunks`` row records how many outcomes it committed, a *digest* of them (every
bit of every value) and a *fingerprint* (a weighted sum SQLite can recompute: it covers ids, chunk
indices, labels, predictions and the correctness and attacked bits, not the norms). A run is *damaged*
when its rows no longer agree with that (rows lost or changed on disk, a flipped bit, a file edited by
hand), when its own record no longer hashes to its id, or when it is marked complete while chunks are
missing.

Two depths: :func:`summary_damage` (what ``Store.results`` runs with its aggregates, at the cost of one
short integer expression per row in SQL) compares each run's row count and fingerprint with its chunk rows;
:func:`run_damage` (``Store.check_runs``) reads every row and names the damaged chunks.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

from robustarch.store._types import RunKey, canonical_json

# One outcome row in EXAMPLE_FIELDS order: ids, labels, predictions and booleans as int64, norms as float64,
# i.e. the values SQLite returns, so the digest of what is read back equals the digest of what was written.
_ROW_FORMAT = "qqqqqqqqddq"
# The fingerprint is linear: a weighted sum of a row's integers, so one changed value (any flipped bit)
# always changes it, and SQLite sums the weighted id, chunk, label and predictions while the booleans' sums
# come from the aggregate query that counts them anyway (``Store.results``). Sums stay far inside int64 for
# example ids below 2^40 and runs below 2^20 examples. Rows trading values escape it; the digest does not.
_FP_WEIGHTS = {"example_id": 1, "chunk_index": 3, "label": 5, "clean_pred": 7, "adv_pred": 11}
FP_BOOL_WEIGHTS = {
    "clean_correct1": 13,
    "clean_correct5": 17,
    "adv_correct1": 19,
    "adv_correct5": 23,
    "attacked": 29,
}


def damaged_file_message(path: object, problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
    return (
        f"results store {path} is damaged: SQLite's integrity check reports: {shown}. Its numbers cannot be "
        f"trusted. Copy the runs that are intact to a new store with `robustarch store salvage {path}` (the "
        "damaged file is kept beside it), then run the study again: it computes only what was lost."
    )


# -- what a chunk is committed with ------------------------------------------------------------------------
def chunk_digest(rows: Iterable[Sequence[Any]]) -> str:
    """blake2b-128 (hex) of a chunk's outcome rows (EXAMPLE_FIELDS order), sorted by example id.

    Raises ``struct.error`` for a value of the wrong type (what a damaged record may hold)."""
    ordered = sorted(rows, key=itemgetter(0))
    data = struct.pack("<" + _ROW_FORMAT * len(ordered), *chain.from_iterable(ordered))
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def row_fingerprint(v: Sequence[Any], chunk: int) -> int:
    """The fingerprint of a row (EXAMPLE_FIELDS order) stored under chunk index ``chunk``: its integers
    weighted by ``_FP_WEIGHTS`` and ``FP_BOOL_WEIGHTS``, written out (the hot path of ``commit_chunk``; a
    test checks it against the SQL)."""
    eid, label, cp, c1, c5, ap, a1, a5, _, _, att = v
    return eid + 3 * chunk + 5 * label + 7 * cp + 11 * ap + 13 * c1 + 17 * c5 + 19 * a1 + 23 * a5 + 29 * att


def chunk_fingerprint(rows: Iterable[Sequence[Any]], chunk: int) -> int:
    """The sum of the rows' fingerprints: what a chunk row records."""
    return sum(row_fingerprint(v, chunk) for v in rows)


# SQL over the examples table aliased ``e``: the part of a row's fingerprint not made of booleans; add
# FP_BOOL_WEIGHTS times the booleans' sums (``run_fingerprint``) for the whole
FINGERPRINT_SQL = " + ".join(f"e.{c} * {w}" for c, w in _FP_WEIGHTS.items())


def run_fingerprint(partial: int, bool_sums: Mapping[str, int]) -> int:
    """A run's fingerprint from ``SUM(FINGERPRINT_SQL)`` and the sums of its boolean columns."""
    return partial + sum(w * bool_sums[c] for c, w in FP_BOOL_WEIGHTS.items())


# -- what is wrong --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunDamage:
    """What is wrong with one stored run (``Store.check_runs``) and what ``Store.repair`` does about it.

    ``chunks`` maps a chunk index to what is wrong with it (repair deletes that chunk, so the engine
    computes it again); ``missing`` lists the chunks a run marked complete lacks (repair clears its
    ``complete`` mark); ``record`` says what is wrong with the run's own record (repair deletes the run,
    and the next study run registers and computes it anew); ``rows`` is what ``Store.results`` found
    without locating it (``check_runs`` names the chunks).
    """

    run_id: str
    marked_complete: bool
    chunks: Mapping[int, str] = field(default_factory=dict)
    missing: tuple[int, ...] = ()
    record: str | None = None
    rows: str | None = None

    def describe(self) -> str:
        """One line naming what is damaged, e.g. ``run 1a2b...: chunk 3: has 96 example rows where ...``."""
        parts = [f"record: {self.record}"] if self.record else []
        parts += [self.rows] if self.rows else []
        parts += [f"chunk {c}: {why}" for c, why in sorted(self.chunks.items())]
        if self.missing:
            parts.append(f"marked complete but chunks {_ranges(self.missing)} are missing")
        return f"run {self.run_id}: " + "; ".join(parts)


def _ranges(values: Iterable[int]) -> str:
    """``0-3, 7`` for [0, 1, 2, 3, 7]."""
    spans: list[list[int]] = []
    for v in sorted(values):
        if spans and spans[-1][1] == v - 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def record_problem(
    run_id: str, key_json: str, values: dict[str, Any], meta: str
) -> tuple[RunKey | None, str | None]:
    """The run's key rebuilt from its stored columns, or what is wrong with its record: the key columns must
    parse and hash to the run's id and equal the stored identity JSON, and ``meta`` must be a JSON object."""
    try:
        key = RunKey(**{**values, "attack_params": json.loads(values["attack_params"])})
        meta_ok = isinstance(json.loads(meta), dict)
    except (TypeError, ValueError) as err:
        return None, f"its key or provenance columns do not parse ({err})"
    if not meta_ok:
        return None, "its provenance (meta) is not a JSON object"
    if key.run_id != run_id or canonical_json(key.identity()) != key_json:
        return None, "its key columns no longer hash to its run id"
    if key.n_planned < 0 or key.chunk_size < 1:
        return None, f"impossible plan (n_planned {key.n_planned}, chunk_size {key.chunk_size})"
    return key, None


def plan_problem(key: RunKey, chunk: int, n: int) -> str | None:
    """What is wrong with a chunk row of index ``chunk`` that committed ``n`` outcomes, given the plan."""
    if not 0 <= chunk < key.n_chunks:
        return f"outside the run's plan of {key.n_chunks} chunks"
    start, stop = key.chunk_bounds(chunk)
    if n != stop - start:
        return f"committed {n} outcomes where its plan has {stop - start} (positions {start}-{stop - 1})"
    return None


def _missing(key: RunKey, complete: bool, chunks: Iterable[int]) -> tuple[int, ...]:
    present = set(chunks)
    return tuple(c for c in range(key.n_chunks) if c not in present) if complete else ()


def summary_damage(
    run_id: str,
    key: RunKey,
    complete: bool,
    chunks: Mapping[int, tuple[int, int | None]],
    n_rows: int,
    fingerprint: int,
) -> RunDamage | None:
    """The check ``Store.results`` runs: the chunk rows ({index: (n, fingerprint)}) against the plan, and
    the run's ``n_rows`` example rows and their fingerprint sum against the chunk rows."""
    bad = {c: why for c, (n, _) in sorted(chunks.items()) if (why := plan_problem(key, c, n))}
    committed = sum(n for n, _ in chunks.values())
    fingerprints = [fp for _, fp in chunks.values() if fp is not None]
    rows = None
    if n_rows != committed:
        rows = f"{n_rows} example rows where its chunks committed {committed}"
    # chunks of schema 1 have no fingerprint: then the counts are all this check has
    elif len(fingerprints) == len(chunks) and fingerprint != sum(fingerprints):
        rows = "its example rows differ from what its chunks committed (fingerprint mismatch)"
    missing = _missing(key, complete, chunks)
    if not (bad or missing or rows):
        return None
    return RunDamage(run_id, complete, bad, missing, rows=rows)


def chunk_problem(
    key: RunKey, chunk: int, stored: tuple[int, str | None] | None, rows: Sequence[Sequence[Any]]
) -> str | None:
    """What is wrong with one chunk of a run (None: nothing). ``stored`` = the chunk row's (n, digest), None
    when there is no chunk row; ``rows`` = the outcome rows stored under this chunk index."""
    if stored is None:
        return f"{len(rows)} example rows without a committed chunk"
    n, digest = stored
    if why := plan_problem(key, chunk, n):
        return why
    if len(rows) != n:
        return f"has {len(rows)} example rows where {n} were committed"
    if digest is None:  # committed by schema 1, which kept no digest: the counts above are all we can check
        return None
    try:
        same = chunk_digest(rows) == digest
    except struct.error:
        return "its example rows hold values of the wrong type"
    return None if same else "its example rows differ from what was committed (digest mismatch)"


def run_damage(
    run_id: str,
    key: RunKey,
    complete: bool,
    chunks: Mapping[int, tuple[int, str | None]],
    rows: Mapping[int, Sequence[Sequence[Any]]],
) -> RunDamage | None:
    """The check ``Store.check_runs`` runs: each chunk row ({index: (n, digest)}) and the outcome rows
    stored under its index (``rows``) against the plan and the digest."""
    bad = {}
    for c in sorted(chunks.keys() | rows.keys()):
        if why := chunk_problem(key, c, chunks.get(c), rows.get(c, ())):
            bad[c] = why
    missing = _missing(key, complete, chunks)
    if not bad and not missing:
        return None
    return RunDamage(run_id, complete, bad, missing)


# -- the file's pages ------------------------------------------------------------------------------------
def file_check(db: sqlite3.Connection, max_seconds: float | None) -> tuple[list[str], bool]:
    """SQLite's ``PRAGMA integrity_check``: every page of every b-tree read, its structure, records, key
    order and NOT NULL constraints checked. (``quick_check`` skips the key order, so it misses a flipped bit
    in an example id, and is no faster here: the tables are WITHOUT ROWID with no separate index.)

    Returns (problems, finished): ``finished`` is False when the check was stopped after ``max_seconds``
    (a huge store); the problems then cover what was read."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    stopped = False

    def over_budget() -> bool:
        nonlocal stopped
        stopped = deadline is not None and time.monotonic() > deadline
        return stopped

    db.set_progress_handler(over_budget, 10_000)  # called every 10,000 virtual-machine instructions
    try:
        rows = [r[0] for r in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.OperationalError:
        if not stopped:  # not our interrupt: a real error (e.g. SQLITE_CORRUPT) for the caller
            raise
        rows = []
    finally:
        db.set_progress_handler(None, 0)
    if rows == ["ok"]:
        return [], not stopped
    # SQLite heads its report with "*** in database main ***" and may put several problems in one row
    lines = [line for row in rows for line in row.splitlines()]
    return [line for line in lines if line.strip() and not line.startswith("*** in database")], not stopped
