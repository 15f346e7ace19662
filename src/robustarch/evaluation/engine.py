"""The evaluation engine: one model, one ordered example list, a clean run and any number of attack runs,
computed chunk by chunk and committed to the results store (``docs/store.md``, ``docs/study.md``).

Per batch (= chunk) the engine runs one clean forward shared by every attack, then each attack whose run
still lacks the chunk, a forward on the adversarial batch, and commits the chunk's per-example outcomes
(top-1/top-5, clean and adversarial, realized L-inf and L2 norms) in one transaction per run.

Determinism. Each (run, chunk) draws its random numbers from a CPU ``torch.Generator`` seeded from
``sha256(run_id/chunk)``; the run id covers the seed, the attack and all its parameters, the model's
weights hash and the batch size (= chunk size). So any chunk is recomputed identically on its own, in any
order, by any process: that is what makes resuming and sharding over ranks give the numbers of one
uninterrupted process.

Skipping (``docs/study.md``). An example is not attacked only where its result is defined without the
attack: ``adv_metric == "robust"`` (correct on x *and* x_adv) makes an example whose clean top-5 is wrong
adversarially wrong in top-1 and top-5, whatever the attack does; and only for attacks that draw no random
numbers and treat examples independently (FGSM, StepLL, PGD without random start), so the other examples
see the same computation. The ``paper`` profile measures accuracy on the perturbed set (``perturbed``):
nothing is skipped there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustarch.errors import RobustarchError
from robustarch.store import ExampleOutcome, RunKey, Store
from robustarch.store._hooks import pause_point

log = logging.getLogger(__name__)

CLEAN = "clean"
DTYPES = ("float32", "amp-bfloat16", "amp-float16")


def adv_metric_for(profile: str) -> str:
    """``perturbed`` for the study's own profile (accuracy on the perturbed test set), else ``robust``."""
    return "perturbed" if profile == "paper" else "robust"


def may_skip(attack: Any, adv_metric: str) -> bool:
    """Whether examples whose result is defined without the attack may go unattacked (module docstring):
    under the robust metric, for an attack whose class declares it per-example and not randomized."""
    return adv_metric == "robust" and attack.traits.may_skip


def chunk_seed(run_id: str, chunk_index: int) -> int:
    """The seed of a (run, chunk): 63 bits of sha256, stable across processes, platforms and versions."""
    return int.from_bytes(hashlib.sha256(f"{run_id}/{chunk_index}".encode()).digest()[:8], "big") >> 1


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU. Unknown or unavailable devices are clear errors."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise RobustarchError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustarchError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise RobustarchError(f"device type {dev.type!r} is not supported (use cpu, cuda, cuda:N or auto)")
    return dev


def hash_state_dict(model: nn.Module) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and bytes (first 16 hex): identifies weights that
    come from no file (random initialisation), so two different initialisations are never one run."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def weights_file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file (first 16 hex), cached per (path, size, mtime) within a process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
    return _FILE_HASHES[key]


def code_revision() -> str:
    """The git revision of the robustarch source (``+dirty`` when changed), or ``unknown``."""
    src = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    import numpy

    import robustarch

    return {
        "robustarch": robustarch.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
    }


@dataclass(frozen=True)
class AttackPlan:
    """One configured attack of a job; ``label`` is how a study names it (e.g. a preset key, ``pgd-eps2``)."""

    label: str
    attack: Any  # a robustarch.attacks.Attack

    @property
    def name(self) -> str:
        return self.attack.name

    @property
    def profile(self) -> str:
        return self.attack.profile

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.attack.params)


@dataclass
class DataSource:
    """An ordered example list: a torch Dataset of ([0,1] image, label) with stable example ids."""

    dataset: str  # dataset id (robustarch.data)
    label: str  # how reports name it
    subset: str  # names the ordered list, e.g. "test/first:1000"
    data: Any  # torch Dataset
    example_ids: list[int]
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.example_ids)

    def batch(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Images (float32 in [0,1]) and labels of positions [start, stop)."""
        ds = self.data
        if hasattr(ds, "uint8_item") and hasattr(ds, "labels"):
            if getattr(ds, "is_decoded", False):
                u8 = ds.uint8()[start:stop]  # a slice of the in-memory / memory-mapped tensor
            else:
                u8 = torch.stack([ds.uint8_item(i) for i in range(start, stop)])
            return u8.float().div_(255.0), ds.labels[start:stop].clone()
        items = [ds[i] for i in range(start, stop)]
        return torch.stack([x for x, _ in items]), torch.as_tensor(
            [int(y) for _, y in items], dtype=torch.int64
        )


def load_data(
    dataset: str,
    root: str | os.PathLike[str] | None,
    *,
    split: str = "test",
    limit: int | None = None,
    subset: Any = None,
    **options: Any,
) -> DataSource:
    """A :class:`DataSource` through ``robustarch.data.load`` (``options``: cache, ground_truth, ...)."""
    from robustarch import data as rdata

    ds, spec = rdata.load(dataset, root, split=split, limit=limit, subset=subset, **options)
    ids = [int(i) for i in ds.example_ids] if hasattr(ds, "example_ids") else list(range(len(ds)))
    subset_name = f"{getattr(spec, 'split', split)}/{getattr(spec, 'subset', None) or 'all'}"
    info = {"root": str(root), "preprocessing": getattr(spec, "preprocessing", ""), "split": split}
    return DataSource(
        dataset, getattr(spec, "label", dataset), subset_name, ds, ids, int(spec.num_classes), info
    )


@dataclass
class ModelSource:
    """A model of the zoo with its weights (``None``: the random initialisation under ``seed``)."""

    name: str
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False
    id: str | None = None  # how results name the model (e.g. densenas_large for the generic densenas entry)

    @property
    def model_id(self) -> str:
        return self.id or self.name

    def load(self, dataset: str, seed: int) -> nn.Module:
        from robustarch import zoo

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a random initialisation is a function of the study's seed
            return zoo.load(
                self.name, dataset, self.weights, allow_pickle=self.allow_pickle, **self.overrides
            )


@dataclass
class PlannedRun:
    key: RunKey
    run_id: str
    plan: AttackPlan | None  # None: the clean run
    skip: bool

    @property
    def is_clean(self) -> bool:
        return self.plan is None


@dataclass
class ModelJob:
    """Everything one model's evaluation needs, planned: the runs' keys are fixed and registered."""

    data: DataSource
    model_source: ModelSource
    model: nn.Module
    runs: list[PlannedRun]
    meta: dict[str, Any]

    @property
    def n_chunks(self) -> int:
        return self.runs[0].key.n_chunks

    def missing(self, store: Store) -> dict[str, set[int]]:
        """Per run id, the chunks not yet committed."""
        all_chunks = set(range(self.n_chunks))
        return {r.run_id: all_chunks - store.committed_chunks(r.run_id) for r in self.runs}


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype.removeprefix("amp-")))


def _topk_hits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    k = min(5, logits.shape[1])
    top = logits.float().topk(k, dim=1).indices
    pred = top[:, 0]
    return pred, pred == labels, (top == labels[:, None]).any(1)


class Engine:
    """Runs :class:`ModelJob` s into a :class:`Store`. ``rank``/``world_size`` shard chunks over processes
    (chunk c belongs to rank ``c % world_size``); ``dtype`` ``amp-*`` runs attacks and forwards under
    autocast and re-checks ``recheck`` examples per run in float32 (stored as a flag)."""

    def __init__(
        self,
        store: Store,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 128,
        seed: int = 0,
        dtype: str = "float32",
        recheck: int = 64,
        rank: int = 0,
        world_size: int = 1,
        progress: Callable[[int], None] | None = None,
        prepare: bool = True,
    ):
        if batch_size < 1:
            raise RobustarchError(f"batch size must be >= 1, got {batch_size}")
        if dtype not in DTYPES:
            raise RobustarchError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.store = store
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if dtype != "float32" and self.device.type != "cuda":
            log.warning("mixed precision (%s) on %s: meant for GPUs, and slow on a CPU", dtype, self.device)
        self.batch_size, self.seed, self.dtype, self.recheck = batch_size, seed, dtype, recheck
        self.rank, self.world_size = rank, world_size
        self.progress, self.prepare = progress, prepare

    # -- planning -------------------------------------------------------------------------------------
    def plan(
        self,
        data: DataSource,
        model_source: ModelSource,
        attacks: Sequence[AttackPlan],
        extra_meta: Mapping[str, Any] | None = None,
        *,
        register: bool = True,
        load: bool = True,
    ) -> ModelJob:
        """Build the run keys (clean first, then each attack; duplicates merged); with ``register``, record
        the runs in the store. ``load=False`` identifies the model without loading it where it can (a
        weights file is identified by its hash; a random initialisation must be built to be hashed): the
        job's ``model`` is then None and ``params_count`` 0 (not part of a run's identity)."""
        from robustarch import zoo

        if len(data) == 0:
            raise RobustarchError(f"dataset {data.dataset} ({data.subset}) has no examples to evaluate")
        spec = zoo.get_spec(model_source.name, data.dataset)
        model = None
        if load or not model_source.weights:
            model = model_source.load(data.dataset, self.seed)
        weights_hash = (
            weights_file_hash(model_source.weights)
            if model_source.weights
            else "init-" + hash_state_dict(model)
        )
        params_count = zoo.count_parameters(model, exclude_auxiliary=True) if model is not None else 0
        if not load:
            model = None
        common = dict(
            dataset=data.dataset,
            dataset_label=data.label,
            subset=data.subset,
            model=model_source.model_id,
            model_family=spec.family,
            method=spec.method,
            params_count=params_count,
            weights_hash=weights_hash,
            seed=self.seed,
            dtype=self.dtype,
            device=self.device.type,
            n_planned=len(data),
            chunk_size=self.batch_size,
        )
        runs = [
            PlannedRun(
                RunKey(attack=CLEAN, attack_params={}, profile="none", adv_metric="perturbed", **common),
                "",
                None,
                False,
            )
        ]
        seen = {runs[0].key.run_id}
        for plan in attacks:
            params = plan.params
            metric = adv_metric_for(plan.profile)
            key = RunKey(
                attack=plan.name, attack_params=params, profile=plan.profile, adv_metric=metric, **common
            )
            if key.run_id in seen:
                log.info("attack %s repeats an earlier run of this job; evaluated once", plan.label)
                continue
            seen.add(key.run_id)
            runs.append(PlannedRun(key, "", plan, may_skip(plan.attack, metric)))
        for r in runs:
            r.run_id = r.key.run_id
        meta: dict[str, Any] = {}
        if register:
            meta = self._meta(data, model_source, extra_meta)
            for r in runs:
                run_meta = {
                    **meta,
                    "label": r.plan.label if r.plan else CLEAN,
                    "skip_rule": r.skip,
                    **(
                        {"description": r.plan.attack.describe(), "traits": asdict(r.plan.attack.traits)}
                        if r.plan
                        else {}
                    ),
                    "emulate_normalized": bool(r.key.attack_params.get("emulate_normalized_inputs")),
                }
                self.store.begin_run(r.key, run_meta)
        if model is not None:
            model.to(self.device)
        return ModelJob(data, model_source, model, runs, meta)

    def _meta(
        self, data: DataSource, model_source: ModelSource, extra: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Provenance recorded with every run (``docs/store.md``)."""
        return {
            "versions": library_versions(),
            "code_revision": code_revision(),
            "hostname": socket.gethostname(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_name": model_source.name,
            "weights": str(model_source.weights) if model_source.weights else None,
            "overrides": model_source.overrides,
            "data": {"label": data.label, **data.info},
            "batch_size": self.batch_size,
            "torch_threads": torch.get_num_threads(),
            "argv": sys.argv,
            "device_name": (
                torch.cuda.get_device_name(self.device)
                if self.device.type == "cuda"
                else platform.processor() or platform.machine()
            ),
            "world_size": self.world_size,
            "prepared_for_attack": self.prepare,
            **(extra or {}),
        }

    # -- running --------------------------------------------------------------------------------------
    def my_chunks(self, job: ModelJob, missing: Mapping[str, set[int]]) -> list[int]:
        wanted = set().union(*missing.values())
        return sorted(c for c in wanted if c % self.world_size == self.rank)

    def work_units(self, job: ModelJob) -> int:
        """Examples x runs this process still has to compute for ``job`` (for progress bars)."""
        missing = job.missing(self.store)
        return sum(
            (job.runs[0].key.chunk_bounds(c)[1] - job.runs[0].key.chunk_bounds(c)[0])
            for r in job.runs
            for c in missing[r.run_id]
            if c % self.world_size == self.rank
        )

    def run(self, job: ModelJob) -> None:
        """Compute and commit every chunk this process owns that some run of ``job`` lacks."""
        missing = job.missing(self.store)
        todo = self.my_chunks(job, missing)
        if not todo:
            return
        model = self._prepared(job)
        for c in todo:
            start, stop = job.runs[0].key.chunk_bounds(c)
            self._chunk(job, model, c, start, stop, [r for r in job.runs if c in missing[r.run_id]])

    def _prepared(self, job: ModelJob) -> nn.Module:
        """The model to attack: with ``prepare``, ``robustarch.runtime.prepare_for_attack``'s faster copy
        (BatchNorm folded, channels_last, convolutions on tiny maps dense), checked on the job's first chunk,
        the same batch in every process and every resume, so the choice it makes is the same everywhere."""
        from robustarch import runtime

        # glibc otherwise mmaps and page-faults every large activation afresh until its dynamic threshold
        # adapts: measured ~10x on the first attack calls of a process on CPU
        runtime.tune_allocator()
        if not self.prepare:
            return job.model
        start, stop = job.runs[0].key.chunk_bounds(0)
        example, _ = job.data.batch(start, stop)
        model, info = runtime.prepare_for_attack(job.model, example.to(self.device))
        log.info("%s prepared for attack: %s", job.model_source.model_id, info)
        return model

    def _chunk(
        self, job: ModelJob, model: nn.Module, c: int, start: int, stop: int, runs: list[PlannedRun]
    ) -> None:
        t0 = time.perf_counter()
        x, y = job.data.batch(start, stop)
        if x.shape[0] and (float(x.min()) < 0 or float(x.max()) > 1):
            raise RobustarchError(f"dataset {job.data.dataset} gave images outside [0,1]: refusing to attack")
        if int(y.max()) >= job.data.num_classes:
            raise RobustarchError(
                f"label {int(y.max())} >= {job.data.num_classes} classes in {job.data.dataset}"
            )
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        ids = job.data.example_ids[start:stop]
        with torch.no_grad(), _autocast(self.device, self.dtype):
            logits = model(x)
        if logits.shape[1] != job.data.num_classes:
            raise RobustarchError(
                f"model {job.model_source.name} outputs {logits.shape[1]} classes but "
                f"{job.data.dataset} has {job.data.num_classes}"
            )
        clean_pred, c1, c5 = _topk_hits(logits, y)
        clean_s = time.perf_counter() - t0
        for r in runs:
            t1 = time.perf_counter()
            if r.is_clean:
                outcomes = _outcomes(
                    ids,
                    y,
                    clean_pred,
                    c1,
                    c5,
                    clean_pred,
                    c1,
                    c5,
                    torch.zeros(len(y)),
                    torch.zeros(len(y)),
                    torch.ones(len(y), dtype=torch.bool),
                )
            else:
                outcomes = self._attack_chunk(model, r, c, x, y, ids, clean_pred, c1, c5)
                pause_point("mid-chunk")
            self.store.commit_chunk(
                r.run_id, c, outcomes, seconds=time.perf_counter() - t1 + clean_s / len(runs)
            )
            if self.progress is not None:
                self.progress(len(ids))

    def _attack_chunk(
        self,
        model: nn.Module,
        r: PlannedRun,
        c: int,
        x: Tensor,
        y: Tensor,
        ids: Sequence[int],
        clean_pred: Tensor,
        c1: Tensor,
        c5: Tensor,
    ) -> list[ExampleOutcome]:
        assert r.plan is not None
        n = len(y)
        attacked = torch.ones(n, dtype=torch.bool, device=y.device)
        if r.skip:
            attacked = c5.clone()
        sel = attacked.nonzero().flatten()
        adv_pred, a1, a5 = clean_pred.clone(), torch.zeros_like(c1), torch.zeros_like(c5)
        linf, l2 = torch.zeros(n, device=x.device), torch.zeros(n, device=x.device)
        if len(sel):
            xs, ys = (x, y) if len(sel) == n else (x[sel], y[sel])
            gen = torch.Generator().manual_seed(chunk_seed(r.run_id, c))
            with _autocast(self.device, self.dtype):
                adv = r.plan.attack(model, xs, ys, generator=gen)
            adv = adv.float()
            delta = (adv - xs).flatten(1)
            with torch.no_grad(), _autocast(self.device, self.dtype):
                logits_adv = model(adv)
            p, h1, h5 = _topk_hits(logits_adv, ys)
            adv_pred[sel], a1[sel], a5[sel] = p, h1, h5
            linf[sel], l2[sel] = delta.abs().amax(1).float(), delta.norm(dim=1).float()
        if r.key.adv_metric == "robust":
            a1, a5 = a1 & c1, a5 & c5
        return _outcomes(ids, y, clean_pred, c1, c5, adv_pred, a1, a5, linf, l2, attacked)

    # -- finishing ------------------------------------------------------------------------------------
    def finish(self, job: ModelJob) -> list[str]:
        """Mark the job's complete runs complete; returns the ids of runs still incomplete."""
        return [r.run_id for r in job.runs if not self.store.finish_run(r.run_id)]


def _outcomes(
    ids: Sequence[int],
    y: Tensor,
    cp: Tensor,
    c1: Tensor,
    c5: Tensor,
    ap: Tensor,
    a1: Tensor,
    a5: Tensor,
    linf: Tensor,
    l2: Tensor,
    attacked: Tensor,
) -> list[ExampleOutcome]:
    cols = [t.detach().cpu().tolist() for t in (y, cp, c1, c5, ap, a1, a5, linf, l2, attacked)]
    return [
        ExampleOutcome(
            int(i),
            int(lab),
            int(p),
            bool(h1),
            bool(h5),
            int(q),
            bool(g1),
            bool(g5),
            float(li),
            float(l2_),
            bool(at),
        )
        for i, lab, p, h1, h5, q, g1, g5, li, l2_, at in zip(ids, *cols, strict=True)
    ]


def examples_per_second(store: Store, run_ids: Sequence[str]) -> float:
    """Throughput of committed chunks (examples x runs per second of compute) from their recorded times."""
    pairs = store.chunk_seconds(run_ids)
    secs = sum(s for _, s in pairs)
    return sum(n for n, _ in pairs) / secs if secs > 0 else math.nan
