"""The results store: one SQLite file holding every run, its per-example outcomes and reliability flags.

The contract (names, fields, guarantees) is ``docs/store.md``. Reports render only from what is stored here.
"""

from robustarch.store._errors import StoreFullError
from robustarch.store._sqlite import DEFAULT_STORE, SCHEMA_VERSION, Store
from robustarch.store._types import (
    FLAG_STATUSES,
    ExampleOutcome,
    Flag,
    RunKey,
    RunResult,
    canonical_json,
    wilson_interval,
)

__all__ = [
    "DEFAULT_STORE",
    "FLAG_STATUSES",
    "SCHEMA_VERSION",
    "ExampleOutcome",
    "Flag",
    "RunKey",
    "RunResult",
    "Store",
    "StoreFullError",
    "canonical_json",
    "wilson_interval",
]
