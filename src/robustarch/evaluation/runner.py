"""Running evaluation specs into a results store: the one loop behind ``robustarch evaluate``, ``robustarch
study run`` and :func:`robustarch.evaluate`.

For a list of :class:`~robustarch.evaluation.spec.EvaluationSpec` sharing a store and a device, it loads
each distinct example list once, plans every model's runs (what the store already holds is skipped), logs
a cost estimate before any work, then evaluates one model at a time, marks its runs complete and runs the
reliability checks, with progress bars that move. Under ``torchrun`` every rank computes its share of the
chunks (``docs/study.md``); rank 0 finishes runs, checks and reports. Ctrl-C raises
:class:`EvaluationInterrupted`, which says how many chunks were committed: running the same again resumes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from robustarch.errors import RobustarchError
from robustarch.evaluation.engine import Engine, ModelJob
from robustarch.evaluation.progress import Progress, job_cost, probe, report_estimate
from robustarch.evaluation.spec import EvaluationSpec
from robustarch.store import Store

log = logging.getLogger(__name__)


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during an evaluation. Every chunk committed before it is in the store; running the same
    evaluation again computes only what is missing."""

    def __init__(self, committed: int, store: str):
        super().__init__(f"interrupted: {committed} chunks committed; run the same command to resume")
        self.committed, self.store = committed, store


@dataclass
class _Planned:
    spec: EvaluationSpec
    engine: Engine
    job: ModelJob  # planned without registering; the model loaded only where the estimate needed it


def open_store(store: str | os.PathLike[str] | Store | None) -> tuple[Store, bool]:
    """(store, whether this call opened it): a Store as given, a file path, or None for one in memory."""
    if isinstance(store, Store):
        return store, False
    return Store(Path(store).expanduser() if store is not None else ":memory:"), True


def run_specs(
    specs: Sequence[EvaluationSpec],
    store: str | os.PathLike[str] | Store | None = None,
    *,
    progress: bool = True,
    estimate: bool = True,
    progress_file: IO[str] | None = None,
) -> list[str]:
    """Evaluate ``specs`` into ``store`` (default: the specs' own, else in memory); returns the run ids in
    plan order (clean run first for each model). Only what the store lacks is computed."""
    from robustarch.evaluation import distributed
    from robustarch.evaluation.checks import model_checks, store_checks

    if not specs:
        raise RobustarchError("nothing to evaluate: no model and dataset given")
    devices = {s.device for s in specs}
    if len(devices) > 1:
        raise RobustarchError(f"one evaluation runs on one device, got {sorted(devices)}")
    ctx = distributed.init(specs[0].device)
    opened, owned = open_store(store if store is not None else specs[0].store)
    bar = Progress(progress and ctx.rank == 0, file=progress_file)
    engines: list[Engine] = []
    run_ids: list[str] = []
    try:
        if ctx.rank == 0:
            repair_damaged(opened)
        ctx.barrier()  # no rank plans from chunks that rank 0 is removing
        planned = _plan_all(specs, opened, ctx, bar, engines)
        bar.set_total(sum(p.engine.work_units(p.job) for p in planned))
        if estimate and ctx.rank == 0:
            _estimate(planned)
        for p in planned:
            job = p.job
            if job.model is None:  # planned without loading: load, plan and register now
                job = p.engine.plan(job.data, p.spec.model, p.spec.attacks, dict(p.spec.meta))
            else:
                p.engine.register(job, dict(p.spec.meta))
            run_ids += [r.run_id for r in job.runs]
            bar.start_job(f"{job.data.dataset}/{job.model_ref.id}", p.engine.work_units(job))
            p.engine.run(job)
            ctx.barrier()
            if ctx.rank == 0:
                incomplete = p.engine.finish(job)
                if incomplete:
                    raise RobustarchError(f"runs {incomplete} are incomplete after all ranks finished")
                if p.spec.checks:
                    model_checks(p.engine, job)
            ctx.barrier()
            p.job = job = None  # type: ignore[assignment]  # free the model before the next one
        if ctx.rank == 0 and any(s.checks for s in specs):
            store_checks(opened, run_ids)
        ctx.barrier()
    except KeyboardInterrupt:
        raise EvaluationInterrupted(sum(e.chunks_committed for e in engines), str(opened.path)) from None
    finally:
        bar.close()
        if owned and opened.path != Path(":memory:"):
            opened.close()
        ctx.close()
    return run_ids


def repair_damaged(store: Store) -> int:
    """Remove the chunks of runs whose stored rows no longer match what they committed (a flipped bit, a
    lost page; ``Store.results`` names them), so that planning finds exactly those missing and they are
    computed again. Returns the number of runs repaired."""
    damaged = [r for r in store.results() if r.damaged]
    for r in damaged:
        for d in store.repair(r.run_id):
            log.warning("store %s: %s; its damaged chunks are computed again", store.path, d.describe())
    return len(damaged)


def _plan_all(
    specs: Sequence[EvaluationSpec], store: Store, ctx: Any, bar: Progress, engines: list[Engine]
) -> list[_Planned]:
    """Load each distinct example list once and plan every model's runs (not yet registered)."""
    loaded: dict[Any, Any] = {}
    out = []
    for spec in specs:
        if spec.data not in loaded:
            loaded[spec.data] = spec.data.load()
        engine = Engine(
            store,
            device=ctx.device,
            batch_size=spec.batch_size,
            seed=spec.seed,
            dtype=spec.dtype,
            recheck=spec.recheck,
            rank=ctx.rank,
            world_size=ctx.world_size,
            progress=bar if bar.enabled else None,
            prepare=spec.prepare,
        )
        engines.append(engine)
        job = engine.plan(loaded[spec.data], spec.model, spec.attacks, register=False, load=len(specs) == 1)
        out.append(_Planned(spec, engine, job))
    return out


def _estimate(planned: list[_Planned]) -> None:
    """Log the cost of what remains, probing each model that has work left (the one model of a single
    evaluation stays loaded and prepared for the run)."""
    costs = []
    for p in planned:
        cost = job_cost(p.engine, p.job)
        if not cost.gradient_passes and not cost.forward_passes:
            continue
        job = p.job
        if job.model is None:
            job = p.engine.plan(job.data, p.spec.model, p.spec.attacks, register=False)
        model = p.engine.attack_model(job)
        grad_s, fwd_s = probe(model, job, p.engine.device)
        costs.append(replace(cost, seconds_per_gradient_pass=grad_s, seconds_per_forward_pass=fwd_s))
    if costs:
        report_estimate(costs)
