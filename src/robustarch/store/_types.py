"""Records of the results store: what identifies a run, one example's outcome, a run's aggregate."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

# z for a two-sided 95% interval: scipy.stats.norm.ppf(0.975), written out so the store needs no scipy.
Z95 = 1.959963984540054

FlagStatus = Literal["ok", "warn", "fail"]
FLAG_STATUSES = ("ok", "warn", "fail")

# Descriptive RunKey fields: they follow from (model, dataset) and do not enter the run's identity.
_DESCRIPTIVE = ("dataset_label", "model_family", "method", "params_count")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values always give equal text (and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class RunKey:
    """What identifies a run: one evaluation of one model under one attack over a fixed, ordered example list.

    ``subset`` names the example list (e.g. ``"first:1000"``); ``device`` is a device *type* (``cpu``,
    ``cuda``), so the shards of a distributed run on ``cuda:0`` and ``cuda:1`` are one run. ``adv_metric``
    says what an adversarial "correct" means: ``perturbed`` = f(x_adv) is right for every example (what the
    study measured), ``robust`` = right on x *and* on x_adv (RobustBench/AutoAttack's robust accuracy).
    """

    dataset: str
    dataset_label: str
    subset: str
    model: str
    model_family: str  # handcrafted | nas
    method: str
    params_count: int
    weights_hash: str
    attack: str  # "clean" for a clean-only run
    attack_params: dict[str, Any]
    profile: str
    seed: int
    dtype: str
    device: str
    n_planned: int
    chunk_size: int
    adv_metric: str = "perturbed"

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _DESCRIPTIVE}

    @property
    def run_id(self) -> str:
        """sha256 of the canonical JSON of the identifying fields, first 16 hex characters."""
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()[:16]

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_planned / self.chunk_size)

    def chunk_bounds(self, chunk_index: int) -> tuple[int, int]:
        """Positions [start, stop) of a chunk in the run's ordered example list."""
        start = chunk_index * self.chunk_size
        return start, min(start + self.chunk_size, self.n_planned)


@dataclass(frozen=True)
class ExampleOutcome:
    """One example under one run. For a clean run adv_* equal the clean fields and the norms are 0.

    ``attacked`` is False where the engine did not attack the example because its result is defined without
    it (see ``docs/study.md``); then adv_* hold that defined result and the norms are 0.
    """

    example_id: int
    label: int
    clean_pred: int
    clean_correct1: bool
    clean_correct5: bool
    adv_pred: int
    adv_correct1: bool
    adv_correct5: bool
    linf: float
    l2: float
    attacked: bool = True


EXAMPLE_FIELDS = tuple(f.name for f in fields(ExampleOutcome))


@dataclass(frozen=True)
class Flag:
    """A reliability check's verdict about a run (``../shared/docs/attacks.md``, "Checks")."""

    check: str
    status: str  # ok | warn | fail
    value: float | None
    detail: str


@dataclass(frozen=True)
class RunResult:
    """A run's key, provenance and aggregates, all computed from the stored per-example outcomes."""

    run_id: str
    dataset: str
    dataset_label: str
    subset: str
    model: str
    model_family: str
    method: str
    params_count: int
    weights_hash: str
    attack: str
    attack_params: dict[str, Any]
    profile: str
    seed: int
    dtype: str
    device: str
    n_planned: int
    chunk_size: int
    adv_metric: str
    meta: dict[str, Any]
    n: int
    complete: bool
    clean_top1: float
    clean_top5: float
    adv_top1: float
    adv_top5: float
    clean_top1_ci: tuple[float, float]
    clean_top5_ci: tuple[float, float]
    adv_top1_ci: tuple[float, float]
    adv_top5_ci: tuple[float, float]
    clean_top1_count: int
    clean_top5_count: int
    adv_top1_count: int
    adv_top5_count: int
    # among examples correct on clean input (top-1), the share the attack made wrong
    attack_success_rate: float
    linf_max: float
    linf_mean: float
    l2_max: float
    l2_mean: float
    n_attacked: int
    created_at: str
    finished_at: str | None
    flags: list[Flag] = field(default_factory=list)
    # what is wrong with the run's stored rows (``Store.check_runs``), None when they match its plan; a
    # damaged run's numbers must not be shown (``Store.repair`` lets the engine compute it again)
    damage: str | None = None

    @property
    def damaged(self) -> bool:
        return self.damage is not None

    @property
    def key(self) -> RunKey:
        return RunKey(**{f.name: getattr(self, f.name) for f in fields(RunKey)})


def paired_interval(both: int, only1: int, only2: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p1 - p2 for paired binary outcomes on the same examples (Agresti and Min 2005: add
    1/2 to each cell). ``only1`` = examples right under 1 and wrong under 2, ``only2`` the reverse."""
    n = both + only1 + only2 + neither + 2.0
    b, c = only1 + 0.5, only2 + 0.5
    d = (b - c) / n
    half = z * math.sqrt(max((b + c) - (b - c) ** 2 / n, 0.0)) / n
    return (max(-1.0, d - half), min(1.0, d + half))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the exact bounds at p = 0 or 1 are 0 and 1; keep rounding from moving them
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)
