"""The results store: one SQLite file holding every run, its per-example outcomes and reliability flags.

The contract (names, fields, guarantees) is ``docs/store.md``. Reports render only from what is stored here.
"""

from robustarch.store._errors import StoreDamagedError, StoreFullError
from robustarch.store._integrity import RunDamage, chunk_digest
from robustarch.store._salvage import salvage
from robustarch.store._sqlite import DEFAULT_STORE, FILE_CHECK_SECONDS, SCHEMA_VERSION, Store
from robustarch.store._types import (
    FLAG_STATUSES,
    ExampleOutcome,
    Flag,
    RunKey,
    RunResult,
    canonical_json,
    paired_interval,
    wilson_interval,
)

__all__ = [
    "DEFAULT_STORE",
    "FILE_CHECK_SECONDS",
    "FLAG_STATUSES",
    "SCHEMA_VERSION",
    "ExampleOutcome",
    "Flag",
    "RunDamage",
    "RunKey",
    "RunResult",
    "Store",
    "StoreDamagedError",
    "StoreFullError",
    "canonical_json",
    "chunk_digest",
    "paired_interval",
    "salvage",
    "wilson_interval",
]
