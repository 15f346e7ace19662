"""Store integrity: flipped bits in the file (detected and named), complete runs with missing rows (damaged,
repaired, recomputed equal), damaged records, a full disk (clear error, committed work intact, continues
once space is freed), schema 1 stores, and the check of a store another process is writing."""

from __future__ import annotations

import logging
import multiprocessing as mp
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

import robustarch.store._sqlite as store_sqlite
from robustarch.cli import main
from robustarch.errors import RobustarchError
from robustarch.store import (
    SCHEMA_VERSION,
    RunDamage,
    Store,
    StoreDamagedError,
    StoreFullError,
    salvage,
)
from robustarch.store._integrity import (
    FINGERPRINT_SQL,
    FP_BOOL_WEIGHTS,
    chunk_fingerprint,
    file_check,
    row_fingerprint,
    run_fingerprint,
)
from robustarch.store._types import EXAMPLE_FIELDS
from test_store import fill, make_key, random_outcomes

# Column order of an examples record: the WITHOUT ROWID primary key (run_id, example_id), then the rest.
RECORD_COLUMNS = ("run_id", "example_id", "chunk_index", *EXAMPLE_FIELDS[1:])
INT_COLUMNS = [c for c in RECORD_COLUMNS[1:] if c not in ("linf", "l2")]


def three_runs(path: Path, n: int = 30, chunk: int = 10) -> tuple[Store, dict[str, list]]:
    """A store with three complete runs (each marked complete and flagged); returns it and the outcomes."""
    store = Store(path)
    outs = {}
    for seed in range(3):
        run_id, o = fill(store, make_key(seed=seed, n_planned=n, chunk_size=chunk, subset=f"first:{n}"), seed)
        assert store.finish_run(run_id)
        store.add_flag(run_id, "budget", "ok", 1.0, "within budget")
        outs[run_id] = o
    return store, outs


def numbers(store: Store) -> dict[str, tuple]:
    """What a report shows of each run (and its example rows)."""
    return {
        r.run_id: (
            r.complete,
            r.n,
            r.clean_top1,
            r.adv_top1,
            r.adv_top5,
            r.linf_max,
            tuple(store.examples(r.run_id)),
        )
        for r in store.results(check=False)
    }


def checkpointed(store: Store) -> Path:
    """Close the store with everything in its main file (no write-ahead log), so the file's bytes are it."""
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    assert not Path(f"{store.path}-wal").exists() or Path(f"{store.path}-wal").stat().st_size == 0
    return store.path


def _serial_size(t: int) -> int:
    if t in (0, 8, 9):
        return 0
    if t <= 7:
        return {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8}[t]
    return (t - 12) // 2 if t % 2 == 0 else (t - 13) // 2


def example_records(data: bytes, run_id: str) -> list[dict]:
    """The examples-table records of one run in a store file's bytes: where each column's serial type and
    value bytes are, and the record's example id. A record is its header (length 14: one byte per serial
    type) then the values; the run id is the first value, a 16-character text (serial type 45)."""
    rid = run_id.encode()
    out, at = [], data.find(rid)
    while at >= 0:
        head = at - 14
        if head >= 0 and data[head] == 14 and data[head + 1] == 45:
            types = list(data[head + 1 : at])
            pos, cols = at, {}
            for name, t in zip(RECORD_COLUMNS, types, strict=True):
                cols[name] = (head + 1 + len(cols), t, pos, _serial_size(t))
                pos += _serial_size(t)
            _, id_type, id_at, id_size = cols["example_id"]
            example_id = int.from_bytes(data[id_at : id_at + id_size], "big") if id_size else id_type - 8
            out.append({"columns": cols, "example_id": example_id})
        at = data.find(rid, at + 1)
    return out


def flip_one_bit(path: Path, run_id: str, example_id: int, column: str) -> None:
    """Flip one bit of one stored value: the serial type's low bit for a 0/1 integer (0 <-> 1), else the
    lowest bit of the value's last byte."""
    data = bytearray(path.read_bytes())
    [record] = [r for r in example_records(bytes(data), run_id) if r["example_id"] == example_id]
    type_at, _, value_at, size = record["columns"][column]
    if size == 0:
        data[type_at] ^= 1
    else:
        data[value_at + size - 1] ^= 1
    path.write_bytes(bytes(data))


# -- what a chunk is committed with ---------------------------------------------------------------------
def test_python_fingerprint_equals_sqls(tmp_path):
    """commit_chunk computes the fingerprint in Python; Store.results recomputes it from SQL (a partial sum
    plus the booleans' weighted sums): they must agree, negative values and large ids included."""
    rng = np.random.default_rng(0)
    n = 300
    cols = {
        "example_id": rng.integers(-(2**40), 2**40, n),
        "label": rng.integers(-5, 21_000, n),
        "clean_pred": rng.integers(-5, 21_000, n),
        "adv_pred": rng.integers(-1, 1000, n),
        **{c: rng.integers(0, 2, n) for c in FP_BOOL_WEIGHTS},
        "linf": rng.random(n),
        "l2": rng.random(n),
    }
    rows = [tuple(v.item() for v in r) for r in zip(*(cols[c] for c in EXAMPLE_FIELDS), strict=True)]
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE e (chunk_index, {', '.join(EXAMPLE_FIELDS)})")
    for chunk in (0, 7, 2**33, -2):
        db.execute("DELETE FROM e")
        db.executemany(
            f"INSERT INTO e VALUES ({', '.join('?' * (1 + len(EXAMPLE_FIELDS)))})",
            [(chunk, *r) for r in rows],
        )
        partial, *bools = db.execute(
            f"SELECT SUM({FINGERPRINT_SQL}), {', '.join(f'SUM({c})' for c in FP_BOOL_WEIGHTS)} FROM e"
        ).fetchone()
        whole = run_fingerprint(partial, dict(zip(FP_BOOL_WEIGHTS, bools, strict=True)))
        assert whole == chunk_fingerprint(rows, chunk) == sum(row_fingerprint(r, chunk) for r in rows)
    # any one value changed by any amount changes it (weights are nonzero and the sum is exact)
    for i, c in enumerate(EXAMPLE_FIELDS):
        if c not in ("linf", "l2"):
            changed = [(*rows[0][:i], rows[0][i] ^ 1, *rows[0][i + 1 :]), *rows[1:]]
            assert chunk_fingerprint(changed, 0) != chunk_fingerprint(rows, 0), c


def test_an_intact_store_passes_every_check(tmp_path):
    store, _ = three_runs(tmp_path / "s.sqlite")
    assert store.check_runs() == [] and store.check_file() == []
    assert [r.damage for r in store.results()] == [None] * 3
    assert not any(r.damaged for r in store.results())
    store.close()
    assert Store(tmp_path / "s.sqlite").check_runs() == []


# -- flipped bits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", RECORD_COLUMNS[1:])
def test_a_flipped_bit_in_a_stored_value_is_detected_and_named(tmp_path, column):
    store, outs = three_runs(tmp_path / "s.sqlite")
    reference = numbers(store)
    victim = sorted(outs)[1]
    example = outs[victim][13]  # position 13: chunk 1 of 0..2
    path = checkpointed(store)
    flip_one_bit(path, victim, example.example_id, column)
    if column == "example_id":  # 113 -> 112: two rows with one key, out of order: SQLite's check sees it
        with pytest.raises(StoreDamagedError, match=rf"{path}.*PRIMARY KEY order for examples"):
            Store(path)
        store = Store(path, check=False)
    else:  # the file is sound as SQLite sees it: only the store's own checks can see this flip
        store = Store(path)
        assert store.check_file() == []
    [damage] = store.check_runs()
    # the flipped row is in chunk 1; a flipped chunk index moves it into chunk 0 (which then has 11 rows)
    assert damage.run_id == victim and list(damage.chunks) == ([0, 1] if column == "chunk_index" else [1])
    assert "digest mismatch" in damage.chunks[1] or column == "chunk_index"
    by_id = {r.run_id: r for r in store.results()}
    if column in INT_COLUMNS:  # every integer is checked with the aggregates, at no extra scan
        assert by_id[victim].damaged and victim in by_id[victim].damage
    else:  # a norm's lowest bit: only the digest (check_runs) sees it
        assert not by_id[victim].damaged
    assert all(not r.damaged for rid, r in by_id.items() if rid != victim)
    # repair deletes exactly the damaged chunks; committing them again restores the reference numbers
    assert [d.run_id for d in store.repair()] == [victim]
    assert store.committed_chunks(victim) == {0, 1, 2} - set(damage.chunks)
    assert not store.result(victim).complete and store.flags(victim) == []
    key = store.result(victim).key
    for c in damage.chunks:
        a, b = key.chunk_bounds(c)
        assert store.commit_chunk(victim, c, outs[victim][a:b])
    assert store.finish_run(victim)
    store.add_flag(victim, "budget", "ok", 1.0, "within budget")
    assert numbers(store) == reference and store.check_runs() == [] and store.check_file() == []


def test_a_flipped_bit_changes_a_reported_cell_without_the_checks(tmp_path):
    """The issue's case: one bit and a cell changes while the run stays complete; the check catches it."""
    store, outs = three_runs(tmp_path / "s.sqlite")
    victim = sorted(outs)[0]
    correct = next(o for o in outs[victim] if o.adv_correct1)
    before = store.result(victim).adv_top1_count
    flip_one_bit(checkpointed(store), victim, correct.example_id, "adv_correct1")
    store = Store(tmp_path / "s.sqlite")
    unchecked = store.results(check=False, run_id=victim)[0]
    assert unchecked.complete and unchecked.adv_top1_count == before - 1 and unchecked.damage is None
    checked = store.result(victim)
    assert checked.damaged and "fingerprint mismatch" in checked.damage


def dbstat_pages(path: Path, table: str, kind: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [
            r[0]
            for r in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ?", (table, kind))
        ]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite is built without the dbstat table")
    finally:
        db.close()


def test_a_flipped_bit_in_a_page_header_fails_the_open_check_and_salvage_recovers(tmp_path):
    """A bit of a leaf page's cell count: 8 rows of a complete run vanish (the issue's '96 of 300')."""
    store, outs = three_runs(tmp_path / "s.sqlite", n=300, chunk=100)
    reference = numbers(store)
    path = checkpointed(store)
    leaves = dbstat_pages(path, "examples", "leaf")
    page = leaves[len(leaves) // 2]
    data = bytearray(path.read_bytes())
    at = (page - 1) * 4096 + 4  # low byte of the 2-byte cell count in a b-tree page header
    lost = data[at] & -data[at]  # its lowest set bit: the page now lists that many cells fewer
    assert lost
    data[at] ^= lost
    path.write_bytes(bytes(data))

    with pytest.raises(StoreDamagedError, match=rf"{path}.*page {page}.*robustarch store salvage"):
        Store(path)
    # without the open check the runs read, and the one that lost rows is named damaged
    unchecked = Store(path, check=False)
    damaged = [r for r in unchecked.results() if r.damaged]
    assert len(damaged) == 1 and damaged[0].complete and damaged[0].n == 300 - lost
    assert f"{300 - lost} example rows where its chunks committed 300" in damaged[0].damage
    [damage] = unchecked.check_runs()
    assert damage.run_id == damaged[0].run_id and len(damage.chunks) in (1, 2)  # a page may span two
    assert sum(100 - int(w.split()[1]) for w in damage.chunks.values()) == lost, damage
    unchecked.close()

    left = salvage(path, tmp_path / "new.sqlite")
    assert [d.run_id for d in left] == [damaged[0].run_id] and left[0].chunks == damage.chunks
    new = Store(tmp_path / "new.sqlite")
    assert new.check_runs() == []
    victim = damaged[0].run_id
    assert new.committed_chunks(victim) == {0, 1, 2} - set(damage.chunks)
    assert not new.result(victim).complete and new.flags(victim) == []
    for rid in set(outs) - {victim}:  # the intact runs come over whole: complete, flags kept
        assert new.result(rid).complete and new.flags(rid) and numbers(new)[rid] == reference[rid]
    key = new.result(victim).key
    for c in damage.chunks:
        a, b = key.chunk_bounds(c)
        assert new.commit_chunk(victim, c, outs[victim][a:b])
    assert new.finish_run(victim)
    assert numbers(new) == reference


def test_reading_a_damaged_file_is_a_clear_error(tmp_path):
    store, outs = three_runs(tmp_path / "s.sqlite", n=300, chunk=100)
    path = checkpointed(store)
    interior = dbstat_pages(path, "examples", "internal")[0]
    data = bytearray(path.read_bytes())
    at = (interior - 1) * 4096 + 8  # the right-most child pointer: now points into nowhere
    data[at : at + 4] = (10**6).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    store = Store(path, check=False)
    with pytest.raises(StoreDamagedError, match="malformed"):
        store.results()
    with pytest.raises(StoreDamagedError):
        store.examples(sorted(outs)[-1])


# -- missing rows, damaged records ------------------------------------------------------------------------
def test_a_complete_run_with_missing_rows_is_damaged_repaired_and_recomputed_equal(tmp_path):
    store, outs = three_runs(tmp_path / "s.sqlite")
    reference = numbers(store)
    victim = sorted(outs)[2]
    db = store._db
    ids = [o.example_id for o in outs[victim]]
    db.execute("DELETE FROM examples WHERE run_id = ? AND example_id IN (?, ?)", (victim, ids[11], ids[12]))
    db.execute("DELETE FROM chunks WHERE run_id = ? AND chunk_index = 2", (victim,))
    res = store.result(victim)
    assert res.complete and res.n == 28 and res.damaged
    [damage] = store.check_runs()
    assert damage == RunDamage(
        victim,
        True,
        {1: "has 8 example rows where 10 were committed", 2: "10 example rows without a committed chunk"},
        missing=(2,),
    )
    assert "marked complete but chunks 2 are missing" in damage.describe()
    assert store.repair(victim) == [damage]
    assert store.committed_chunks(victim) == {0}
    assert store.check_runs() == [] and not store.result(victim).complete and store.result(victim).n == 10
    assert store.repair() == []  # nothing left to repair
    for c in (1, 2):
        assert store.commit_chunk(victim, c, outs[victim][c * 10 : (c + 1) * 10])
    assert store.finish_run(victim)
    assert numbers(store) == reference


def test_a_chunk_row_that_disagrees_with_the_plan_is_damaged(tmp_path):
    store, outs = three_runs(tmp_path / "s.sqlite")
    victim = sorted(outs)[0]
    store._db.execute("UPDATE chunks SET n = 9 WHERE run_id = ? AND chunk_index = 0", (victim,))
    store._db.execute("UPDATE chunks SET chunk_index = 7 WHERE run_id = ? AND chunk_index = 2", (victim,))
    [damage] = store.check_runs()
    assert damage.chunks[0].startswith("committed 9 outcomes where its plan has 10")
    assert damage.chunks[7] == "outside the run's plan of 3 chunks"
    assert damage.chunks[2] == "10 example rows without a committed chunk" and damage.missing == (2,)
    assert store.result(victim).damaged
    store.repair()
    assert store.committed_chunks(victim) == {1} and store.check_runs() == []


def test_a_damaged_run_record_is_named_and_repair_deletes_the_run(tmp_path):
    store, outs = three_runs(tmp_path / "s.sqlite")
    reference = numbers(store)
    victim = sorted(outs)[1]
    key = store.result(victim).key
    store._db.execute("UPDATE runs SET seed = 99 WHERE run_id = ?", (victim,))
    assert "no longer hash to its run id" in store.result(victim).damage
    store._db.execute("UPDATE runs SET seed = ?, meta = '{\"ver' WHERE run_id = ?", (key.seed, victim))
    res = store.result(victim)  # unparsable provenance: still listed (with {} for it), named damaged
    assert res.damaged and "do not parse" in res.damage and res.meta == {}
    [damage] = store.repair()
    assert damage.record and store.results(run_id=victim) == []
    assert commit_all(store, key, outs[victim]) == 3  # the next study run registers and computes it anew
    assert store.finish_run(victim)
    store.add_flag(victim, "budget", "ok", 1.0, "within budget")
    assert numbers(store) == reference


def _study_commits(monkeypatch) -> list[tuple[str, int]]:
    made: list[tuple[str, int]] = []
    original = Store.commit_chunk

    def counting(self, run_id, chunk_index, outcomes, **kw):
        done = original(self, run_id, chunk_index, outcomes, **kw)
        if done:
            made.append((run_id, chunk_index))
        return done

    monkeypatch.setattr(Store, "commit_chunk", counting)
    return made


def test_a_study_run_recomputes_exactly_the_repaired_chunks(tmp_path, monkeypatch):
    from test_kill import snapshot
    from test_study import write_study

    study = write_study(tmp_path, limit=8, batch=4, models=("resnet18",))
    path = tmp_path / "s.sqlite"
    assert main(["study", "run", str(study), "--store", str(path), "--no-progress"]) == 0
    reference = snapshot(path)
    store = Store(path)
    victim = sorted(reference)[1]
    store._db.execute(
        "DELETE FROM examples WHERE run_id = ? AND chunk_index = 1 AND example_id % 2 = 0", (victim,)
    )
    assert store.result(victim).damaged and store.result(victim).complete  # a complete run, damaged
    store.close()
    made = _study_commits(monkeypatch)
    # study run finds the damage itself, removes the damaged chunk and computes exactly it again
    assert main(["study", "run", str(study), "--store", str(path), "--no-progress"]) == 0
    assert made == [(victim, 1)]
    assert snapshot(path) == reference


# -- disk full --------------------------------------------------------------------------------------------
def commit_all(store: Store, key, outs) -> int:
    """Commit every chunk of a run not yet committed; returns how many this call committed."""
    run_id = store.begin_run(key, {})
    made = 0
    for c in range(key.n_chunks):
        a, b = key.chunk_bounds(c)
        made += store.commit_chunk(run_id, c, outs[a:b])
    return made


def test_disk_full_max_page_count(tmp_path):
    """SQLite's max_page_count stands in for a full disk: the same SQLITE_FULL error."""
    store = Store(tmp_path / "s.sqlite")
    key = make_key(n_planned=3000, chunk_size=100, subset="first:3000")
    outs = random_outcomes(range(3000), 5)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages + 12}")
    with pytest.raises(StoreFullError, match=r"disk is full.*Nothing committed is lost") as err:
        commit_all(store, key, outs)
    assert isinstance(err.value, RobustarchError) and isinstance(
        err.value.__cause__, sqlite3.OperationalError
    )
    run_id = key.run_id
    done = store.committed_chunks(run_id)
    assert 0 < len(done) < key.n_chunks
    assert store.check_runs() == []  # whole chunks only: the failed one was rolled back
    assert store.examples(run_id) == outs[: 100 * len(done)]
    with pytest.raises(StoreFullError):  # every write is covered, not only commit_chunk
        store.begin_run(make_key(seed=42), {"x": "y" * 100_000})
    store._db.execute("PRAGMA max_page_count=1073741823")  # space freed
    assert commit_all(store, key, outs) == key.n_chunks - len(done)
    assert store.finish_run(run_id) and store.examples(run_id) == outs and store.check_runs() == []


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root; skipped elsewhere, where test_disk_full_max_page_count covers the
    error path)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a small tmpfs here ({err})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_a_small_tmpfs_then_space_is_freed(small_disk, tmp_path):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1 << 20))
    path = small_disk / "s.sqlite"
    store = Store(path)
    # 40 runs x 2,000 examples: about 5 MiB of rows, more than the disk holds
    keys = [make_key(seed=s, n_planned=2000, chunk_size=100, subset="first:2000") for s in range(40)]
    outs = [random_outcomes(range(2000), s) for s in range(40)]
    with pytest.raises(StoreFullError, match=r"disk is full \(0\.\d MiB free in .*Nothing committed is lost"):
        for key, o in zip(keys, outs, strict=True):
            commit_all(store, key, o)
    wal = Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0
    # The write-ahead log stays small (checkpointed every 1 MiB): the main file holds the committed work.
    # Before, the log held everything until it reached 4 MiB, i.e. the whole of this disk.
    assert wal <= 1.5 * 2**20 < path.stat().st_size
    assert store.check_runs() == []
    committed = sum(len(store.committed_chunks(k.run_id)) for k in keys)
    assert committed > 0
    with pytest.raises(StoreFullError):  # a new store on the full disk: the same clear error
        Store(small_disk / "other.sqlite")
    store.close()

    filler.unlink()  # space freed: the same work continues where it stopped, in a new process's Store
    store = Store(path)
    assert sum(len(store.committed_chunks(k.run_id)) for k in keys) == committed
    made = sum(commit_all(store, k, o) for k, o in zip(keys[:8], outs[:8], strict=True))
    assert made + committed >= 8 * 20
    for key, o in zip(keys[:8], outs[:8], strict=True):
        assert store.finish_run(key.run_id) and store.examples(key.run_id) == o
    assert store.check_runs() == []


# -- schema 1, the open check, a store being written -------------------------------------------------------
def test_a_schema_1_store_is_migrated_and_still_checked(tmp_path):
    path = tmp_path / "old.sqlite"
    store, outs = three_runs(path)
    reference = numbers(store)
    for column in ("digest", "fingerprint", "extras"):  # what a store written by schema 1 looks like
        store._db.execute(f"ALTER TABLE chunks DROP COLUMN {column}")
    store._db.execute("PRAGMA user_version=1")
    store.close()
    store = Store(path)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert store._db.execute("SELECT COUNT(*) FROM chunks WHERE digest IS NULL").fetchone()[0] == 9
    assert (
        numbers(store) == reference
        and store.check_runs() == []
        and not any(r.damaged for r in store.results())
    )
    victim = sorted(outs)[0]
    store._db.execute(
        "DELETE FROM examples WHERE run_id = ? AND chunk_index = 0 AND example_id % 3 = 0", (victim,)
    )
    [damage] = store.check_runs()  # counts still checked where no digest was kept
    assert list(damage.chunks) == [0] and store.result(victim).damaged
    store.repair()
    assert store.commit_chunk(victim, 0, outs[victim][:10])  # recommitted with digest and fingerprint
    assert store._db.execute("SELECT COUNT(*) FROM chunks WHERE digest IS NULL").fetchone()[0] == 8
    assert store.finish_run(victim) and numbers(store) == reference


def test_the_open_check_is_bounded_in_time(tmp_path, monkeypatch, caplog):
    store, _ = three_runs(tmp_path / "s.sqlite", n=2000, chunk=100)
    problems, finished = file_check(store._db, 0.0)
    assert problems == [] and not finished  # stopped at once, nothing found in what it read
    assert file_check(store._db, None) == ([], True)
    store.close()
    monkeypatch.setattr(store_sqlite, "FILE_CHECK_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="robustarch.store"):
        Store(tmp_path / "s.sqlite").close()
    assert "integrity check stopped after 0 s" in caplog.text


def _busy_writer(path: str, n_chunks: int) -> None:
    store = Store(path)
    key = make_key(seed=77, n_planned=n_chunks * 5, chunk_size=5, subset=f"first:{n_chunks * 5}")
    commit_all(store, key, random_outcomes(range(n_chunks * 5), 77))


def test_checking_a_store_another_process_writes_finds_nothing(tmp_path):
    """check_runs reads one snapshot: a chunk committed between its queries is never seen half."""
    store, _ = three_runs(tmp_path / "s.sqlite")
    proc = mp.get_context("spawn").Process(target=_busy_writer, args=(str(store.path), 400))
    proc.start()
    checks = 0
    while proc.is_alive() or checks == 0:
        assert store.check_runs() == [] and not any(r.damaged for r in store.results())
        checks += 1
    proc.join()
    assert proc.exitcode == 0 and checks > 1
    assert len(store.results()) == 4 and store.check_runs() == []


# -- the command line -------------------------------------------------------------------------------------
def test_cli_check_repair_salvage(tmp_path, capsys):
    store, outs = three_runs(tmp_path / "s.sqlite")
    victim = sorted(outs)[0]
    store._db.execute(
        "DELETE FROM examples WHERE run_id = ? AND chunk_index = 1 AND example_id % 2 = 1", (victim,)
    )
    store.close()
    path = str(tmp_path / "s.sqlite")
    assert main(["store", "check", path]) == 1
    out = capsys.readouterr().out
    assert "2 of 3 runs match their plan" in out and f"damaged: run {victim}: chunk 1" in out
    assert main(["store", "repair", path]) == 0
    assert f"repaired run {victim}: chunk 1" in capsys.readouterr().out
    assert main(["store", "check", path]) == 0
    assert main(["store", "salvage", path, "--to", str(tmp_path / "copy.sqlite")]) == 0
    assert Store(tmp_path / "copy.sqlite").check_runs() == [] and Path(path).exists()
    assert main(["store", "salvage", path]) == 0  # in place: the original is kept beside it
    out = capsys.readouterr().out
    assert "kept the damaged file as" in out and list(tmp_path.glob("s.sqlite.damaged-*"))
    assert main(["store", "check", str(tmp_path / "absent.sqlite")]) == 2
    assert not (tmp_path / "absent.sqlite").exists()


def test_the_report_names_a_damaged_run_and_leaves_it_out(tmp_path):
    from robustarch.report import collect

    store, outs = three_runs(tmp_path / "s.sqlite")
    victim = sorted(outs)[1]
    store._db.execute("DELETE FROM examples WHERE run_id = ? AND chunk_index = 0", (victim,))
    report = collect(store)
    shown = {rid for t in report.tables for row in t.rows for c in row.cells.values() for rid in c.run_ids}
    assert victim not in shown and victim not in {r.run_id for r in report.runs}
    assert shown  # the undamaged runs are shown
    note = next(line for line in report.intro if line.startswith("Left out: 1 damaged run"))
    assert victim in note and "recomputes" in note
