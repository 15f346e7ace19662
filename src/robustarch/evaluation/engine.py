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
adversarially wrong in top-1 and top-5, whatever the attack does; and only for attacks whose class declares
them per-example and not randomized (``AttackTraits.may_skip``: FGSM, StepLL, PGD without random start), so
the other examples see the same computation. The ``paper`` profile measures accuracy on the perturbed set
(``perturbed``): nothing is skipped there.

Non-finite logits. An example whose logits hold a NaN or an infinity has no prediction: it is stored with
prediction -1 and counted wrong (the ``finite_logits`` check flags the run).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from robustarch.attacks import shared_passes
from robustarch.data import DataSource, load_source
from robustarch.errors import RobustarchError
from robustarch.evaluation.provenance import hash_state_dict, run_provenance, weights_file_hash
from robustarch.evaluation.spec import ModelRef, canonical_dtype
from robustarch.store import ExampleOutcome, RunKey, Store
from robustarch.store._hooks import pause_point

log = logging.getLogger(__name__)

CLEAN = "clean"
NO_PREDICTION = -1  # the stored prediction of an example whose logits are not finite


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


def load_data(
    dataset: str,
    root: Any,
    *,
    split: str = "test",
    limit: int | None = None,
    subset: Any = None,
    **options: Any,
) -> DataSource:
    """A :class:`~robustarch.data.DataSource` of a dataset of the table (``robustarch.data.load_source``)."""
    return load_source(dataset, root, split=split, limit=limit, subset=subset, **options)


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
    """Everything one model's evaluation needs, planned: the runs' keys are fixed and registered.
    ``attack_model`` is the model prepared for attacking (built on first use, then kept)."""

    data: DataSource
    model_ref: ModelRef
    model: nn.Module | None
    runs: list[PlannedRun]
    meta: dict[str, Any]
    _prepared: nn.Module | None = None

    @property
    def n_chunks(self) -> int:
        return self.runs[0].key.n_chunks

    def missing(self, store: Store) -> dict[str, set[int]]:
        """Per run id, the chunks not yet committed."""
        all_chunks = set(range(self.n_chunks))
        return {r.run_id: all_chunks - store.committed_chunks(r.run_id) for r in self.runs}


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for an ``amp-*`` dtype, nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype.removeprefix("amp-")))


def topk_hits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(top-1 prediction, top-1 correct, top-5 correct); a row with a NaN or infinite logit has prediction
    ``NO_PREDICTION`` and is wrong in both."""
    k = min(5, logits.shape[1])
    logits = logits.float()
    finite = torch.isfinite(logits).all(1)
    top = logits.nan_to_num(nan=-math.inf).topk(k, dim=1).indices
    pred = torch.where(finite, top[:, 0], torch.full_like(top[:, 0], NO_PREDICTION))
    return pred, (pred == labels) & finite, (top == labels[:, None]).any(1) & finite


def model_identity(ref: ModelRef, model: nn.Module | None, dataset: str) -> str:
    """What identifies a model's weights in its runs' keys: the weights file's hash for a zoo entry
    (published weights: the fetched file's), a hash of the random initialisation's state_dict, or, for a model
    from a factory or from Python, a hash of its state_dict together with its factory arguments and
    normalization (both change its outputs)."""
    if ref.kind == "zoo":
        if ref.weights is None:
            return "init-" + hash_state_dict(model)  # type: ignore[arg-type]
        return weights_file_hash(ref.weights_file(dataset))  # type: ignore[arg-type]
    assert model is not None
    recipe = hashlib.sha256(
        repr((ref.name, sorted(ref.arch.items()), ref.mean, ref.std)).encode()
    ).hexdigest()[:8]
    return f"{hash_state_dict(model)}+{recipe}"


class Engine:
    """Runs :class:`ModelJob` s into a :class:`Store`. ``rank``/``world_size`` shard chunks over processes
    (chunk c belongs to rank ``c % world_size``); ``dtype`` ``amp-*`` runs attacks and forwards under
    autocast and re-checks ``recheck`` examples per run in float32 (stored as a flag). ``progress`` (a
    :class:`~robustarch.evaluation.progress.Progress`) hears of each run started and each chunk committed;
    ``chunks_committed`` counts the (run, chunk) commits this engine made."""

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
        progress: Any = None,
        prepare: bool = True,
    ):
        if batch_size < 1:
            raise RobustarchError(f"batch size must be >= 1, got {batch_size}")
        dtype = canonical_dtype(dtype)
        self.store = store
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if dtype == "amp-float16" and self.device.type != "cuda":
            log.warning(
                "float16 autocast on %s: meant for GPUs, and slow on a CPU (bf16 is not)", self.device
            )
        self.batch_size, self.seed, self.dtype, self.recheck = batch_size, seed, dtype, recheck
        self.rank, self.world_size = rank, world_size
        self.progress, self.prepare = progress, prepare
        self.chunks_committed = 0

    # -- planning -------------------------------------------------------------------------------------
    def plan(
        self,
        data: DataSource,
        model_ref: ModelRef,
        attacks: Sequence[AttackPlan],
        extra_meta: Mapping[str, Any] | None = None,
        *,
        register: bool = True,
        load: bool = True,
    ) -> ModelJob:
        """Build the run keys (clean first, then each attack; duplicates merged); with ``register``, record
        the runs in the store. ``load=False`` identifies the model without keeping it loaded where it can (a
        zoo weights file is identified by its hash; anything else must be built to be hashed): the job's
        ``model`` is then None and ``params_count`` 0 (not part of a run's identity)."""
        from robustarch import zoo

        if len(data) == 0:
            raise RobustarchError(f"dataset {data.dataset} ({data.subset}) has no examples to evaluate")
        # zoo networks build for a dataset of the table: data from elsewhere take the one of its family
        model_dataset = data.budget_dataset
        family, method = model_ref.family_method(model_dataset)
        hashed_from_file = model_ref.kind == "zoo" and model_ref.weights is not None
        model = model_ref.build(model_dataset, self.seed) if load or not hashed_from_file else None
        if data.num_classes is None:
            data.num_classes = _output_classes(model, data, model_dataset)
        params_count = zoo.count_parameters(model, exclude_auxiliary=True) if model is not None else 0
        common = dict(
            dataset=data.dataset,
            dataset_label=data.label,
            subset=data.subset,
            model=model_ref.id,
            model_family=family,
            method=method,
            params_count=params_count,
            weights_hash=model_identity(model_ref, model, model_dataset),
            seed=self.seed,
            dtype=self.dtype,
            device=self.device.type,
            n_planned=len(data),
            chunk_size=self.batch_size,
        )
        if not load:
            model = None
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
        if model is not None:
            model.to(self.device)
        job = ModelJob(data, model_ref, model, runs, {})
        if register:
            self.register(job, extra_meta)
        return job

    def register(self, job: ModelJob, extra_meta: Mapping[str, Any] | None = None) -> None:
        """Record the job's runs in the store with their provenance (an existing run keeps its meta)."""
        job.meta = self._meta(job.data, job.model_ref, extra_meta)
        for r in job.runs:
            self.store.begin_run(r.key, {**job.meta, **_run_meta(r)})

    def _meta(self, data: DataSource, model_ref: ModelRef, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        """Provenance recorded with every run (``docs/store.md``)."""
        classes = data.classes_in(0, len(data))
        weights_file = model_ref.weights_file(data.budget_dataset) if model_ref.weights is not None else None
        return {
            **run_provenance(self.device, self.world_size),
            **model_ref.describe(),
            **({"weights_file": str(weights_file)} if weights_file is not None else {}),
            "data": {
                "label": data.label,
                **data.info,
                **({"classes_measured": classes, "num_classes": data.num_classes} if classes else {}),
            },
            "batch_size": self.batch_size,
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
        sizes = [job.runs[0].key.chunk_bounds(c) for c in range(job.n_chunks)]
        return sum(
            sizes[c][1] - sizes[c][0]
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
        model = self.attack_model(job)
        for c in todo:
            start, stop = job.runs[0].key.chunk_bounds(c)
            self._chunk(job, model, c, start, stop, [r for r in job.runs if c in missing[r.run_id]])

    def attack_model(self, job: ModelJob) -> nn.Module:
        """The model to attack: with ``prepare``, ``robustarch.runtime.prepare_for_attack``'s faster copy
        (BatchNorm folded, channels_last, convolutions on tiny maps dense), checked on the first examples of
        the job's first chunk, the same in every process and every resume, so the choice it makes is the same
        everywhere.
        A model whose two forwards of that batch differ (a randomized model) is attacked as it is: the
        ``deterministic_forward`` check flags it."""
        from robustarch import runtime

        if job.model is None:
            raise RobustarchError("the job was planned without loading its model (load=False)")
        if job._prepared is not None:
            return job._prepared
        # glibc otherwise mmaps and page-faults every large activation afresh until its dynamic threshold
        # adapts: measured ~10x on the first attack calls of a process on CPU
        runtime.tune_allocator()
        job._prepared = job.model
        if self.prepare:
            start, stop = job.runs[0].key.chunk_bounds(0)
            # only the examples the check uses are read (decoding a whole chunk of JPEGs costs ~0.08 s)
            example, _ = job.data.batch(start, min(stop, start + runtime.PROBE_EXAMPLES))
            try:
                job._prepared, info = runtime.prepare_for_attack(job.model, example.to(self.device))
                log.info("%s prepared for attack: %s", job.model_ref.id, info)
            except RobustarchError as err:
                log.warning("%s is attacked as it is, not prepared: %s", job.model_ref.id, err)
        return job._prepared

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
        with torch.no_grad(), autocast(self.device, self.dtype):
            logits = model(x)
        if logits.dim() != 2 or logits.shape[1] != job.data.num_classes:
            raise RobustarchError(
                f"model {job.model_ref.id} outputs shape {tuple(logits.shape)}, but {job.data.dataset} has "
                f"{job.data.num_classes} classes: a model must return logits (N, {job.data.num_classes})"
            )
        clean_pred, c1, c5 = topk_hits(logits, y)
        clean_s = time.perf_counter() - t0
        with shared_passes(model, x, logits):  # attacks starting at x share those passes
            self._runs_of_chunk(model, c, (x, y, ids), runs, (clean_pred, c1, c5), clean_s)

    def _runs_of_chunk(
        self,
        model: nn.Module,
        c: int,
        batch: tuple[Tensor, Tensor, Sequence[int]],
        runs: list[PlannedRun],
        clean: tuple[Tensor, Tensor, Tensor],
        clean_s: float,
    ) -> None:
        """Each run's outcomes on chunk ``c`` (inputs, labels and example ids ``batch``; clean top-1
        predictions and top-1/top-5 hits ``clean``), committed one run at a time."""
        (x, y, ids), (clean_pred, c1, c5) = batch, clean
        for r in runs:
            t1 = time.perf_counter()
            if self.progress is not None:
                self.progress.start_run(r.plan.label if r.plan else CLEAN)
            if r.is_clean:
                zeros, every = torch.zeros(len(y)), torch.ones(len(y), dtype=torch.bool)
                outcomes = _outcomes(ids, y, clean_pred, c1, c5, clean_pred, c1, c5, zeros, zeros, every)
                extras = None
            else:
                outcomes, extras = self._attack_chunk(model, r, c, x, y, ids, clean_pred, c1, c5)
                pause_point("mid-chunk")
            self.store.commit_chunk(
                r.run_id, c, outcomes, seconds=time.perf_counter() - t1 + clean_s / len(runs), extras=extras
            )
            self.chunks_committed += 1
            if self.progress is not None:
                self.progress.advance(len(ids))

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
    ) -> tuple[list[ExampleOutcome], dict[str, Any] | None]:
        """The chunk's outcomes under the run's attack, and what the attack records beside them."""
        assert r.plan is not None
        n = len(y)
        recorded: dict[str, Any] | None = None
        attacked = torch.ones(n, dtype=torch.bool, device=y.device)
        if r.skip:
            attacked = c5.clone()
        sel = attacked.nonzero().flatten()
        adv_pred, a1, a5 = clean_pred.clone(), torch.zeros_like(c1), torch.zeros_like(c5)
        linf, l2 = torch.zeros(n, device=x.device), torch.zeros(n, device=x.device)
        if len(sel):
            xs, ys = (x, y) if len(sel) == n else (x[sel], y[sel])
            gen = torch.Generator().manual_seed(chunk_seed(r.run_id, c))
            with autocast(self.device, self.dtype):
                result = r.plan.attack.run(model, xs, ys, generator=gen)
            adv = result.adv.float()
            keys = r.plan.attack.recorded_extras
            recorded = {k: result.extras[k] for k in keys if k in result.extras} or None
            delta = (adv - xs).flatten(1)
            with torch.no_grad(), autocast(self.device, self.dtype):
                logits_adv = model(adv)
            p, h1, h5 = topk_hits(logits_adv, ys)
            adv_pred[sel], a1[sel], a5[sel] = p, h1, h5
            linf[sel], l2[sel] = delta.abs().amax(1).float(), delta.norm(dim=1).float()
        if r.key.adv_metric == "robust":
            a1, a5 = a1 & c1, a5 & c5
        return _outcomes(ids, y, clean_pred, c1, c5, adv_pred, a1, a5, linf, l2, attacked), recorded

    # -- finishing ------------------------------------------------------------------------------------
    def finish(self, job: ModelJob) -> list[str]:
        """Mark the job's complete runs complete; returns the ids of runs still incomplete."""
        return [r.run_id for r in job.runs if not self.store.finish_run(r.run_id)]


def _output_classes(model: nn.Module | None, data: DataSource, model_dataset: str) -> int:
    """The class count of data given without one: the model's logits decide (at least every label + 1)."""
    from robustarch import zoo

    if model is None:
        n = zoo.dataset_shape(model_dataset).num_classes
    else:
        with torch.no_grad():
            n = int(model(data.batch(0, 1)[0]).shape[-1])
    seen = int(data.labels.max()) + 1 if data.labels is not None and len(data.labels) else 0
    if n < seen:
        raise RobustarchError(f"the model outputs {n} classes but {data.dataset} has a label {seen - 1}")
    return n


def _run_meta(r: PlannedRun) -> dict[str, Any]:
    """What a run's meta records beyond the job's: its label, the skip rule, the attack's description and
    traits."""
    if r.plan is None:
        return {"label": CLEAN, "skip_rule": False, "emulate_normalized": False}
    return {
        "label": r.plan.label,
        "skip_rule": r.skip,
        "emulate_normalized": bool(r.key.attack_params.get("emulate_normalized_inputs")),
        "description": r.plan.attack.describe(),
        "traits": asdict(r.plan.attack.traits),
    }


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
