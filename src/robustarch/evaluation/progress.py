"""What a running evaluation shows: a cost estimate before any work, and progress bars that move.

The estimate counts, from what each attack's class declares (``AttackTraits.gradient_passes`` /
``forward_passes``), the forward+backward and forward passes the planned runs need at most (every example
attacked for every step: skipped examples and early stopping only make it cheaper), and times them with a
short probe of each model on a few examples of its first chunk.

Two bars (tqdm, on stderr): the whole evaluation in examples x runs, and the model being evaluated, with the
attack being computed as its postfix.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

WARN_SECONDS = 600.0  # an estimate above this is a warning: about ten minutes
PROBE_EXAMPLES = 16


@dataclass(frozen=True)
class JobCost:
    """A model job's remaining work: passes per example summed over its runs, and the examples."""

    model: str
    dataset: str
    gradient_passes: int  # forward+backward passes, examples x steps, at most
    forward_passes: int  # forward-only passes (clean and adversarial forwards, queries), at most
    seconds_per_gradient_pass: float | None = None  # per example, from the probe
    seconds_per_forward_pass: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.seconds_per_gradient_pass is None or self.seconds_per_forward_pass is None:
            return None
        return self.gradient_passes * self.seconds_per_gradient_pass + (
            self.forward_passes * self.seconds_per_forward_pass
        )


def job_cost(engine: Any, job: Any) -> JobCost:
    """Passes the job's missing chunks need on this process, from the attacks' declared traits."""
    missing = job.missing(engine.store)
    grad = fwd = 0
    for c in range(job.n_chunks):
        if c % engine.world_size != engine.rank:
            continue
        start, stop = job.runs[0].key.chunk_bounds(c)
        n = stop - start
        todo = [r for r in job.runs if c in missing[r.run_id]]
        if todo:
            fwd += n  # the clean forward shared by the chunk's runs
        for r in todo:
            if r.plan is None:
                continue
            traits = r.plan.attack.traits
            grad += n * traits.gradient_passes
            fwd += n * (traits.forward_passes + 1)  # + the forward on the adversarial batch
    return JobCost(job.model_ref.id, job.data.dataset, grad, fwd)


def probe(model: torch.nn.Module, job: Any, device: torch.device) -> tuple[float, float]:
    """Seconds per example of one forward+backward pass to the input and of one forward pass, measured on
    up to ``PROBE_EXAMPLES`` examples of the job's first chunk (one untimed pass first)."""
    x, y = job.data.batch(0, min(PROBE_EXAMPLES, len(job.data)))
    x, y = x.to(device), y.to(device)

    def backward() -> None:
        xx = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xx), y), xx)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    times = []
    for fn in (backward, forward):
        fn()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) / len(x))
    return times[0], times[1]


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def report_estimate(costs: Sequence[JobCost]) -> float | None:
    """Log the plan's passes and time (a warning above ``WARN_SECONDS``); returns the seconds, or None
    where a model was not probed."""
    grad = sum(c.gradient_passes for c in costs)
    fwd = sum(c.forward_passes for c in costs)
    if not grad and not fwd:
        return 0.0
    for c in costs:
        if c.seconds is not None:
            log.info(
                "estimate %s on %s: at most %s forward+backward and %s forward passes; probe %.3g ms and "
                "%.3g ms per example -> at most %s",
                c.model, c.dataset, f"{c.gradient_passes:,}", f"{c.forward_passes:,}",
                1e3 * (c.seconds_per_gradient_pass or 0), 1e3 * (c.seconds_per_forward_pass or 0),
                human_seconds(c.seconds),  # type: ignore[arg-type]
            )  # fmt: skip
    total = None if any(c.seconds is None for c in costs) else sum(c.seconds or 0.0 for c in costs)
    summary = (
        f"planned: {len(costs)} model job(s), at most {grad:,} forward+backward and {fwd:,} forward passes"
        + (f", about {human_seconds(total)} at most" if total is not None else "")
        + " (skipped examples and early stopping cost less)"
    )
    if total is not None and total > WARN_SECONDS:
        log.warning(
            "%s: over %s. To cut it: fewer examples (--limit), fewer attacks, or a GPU (--device cuda)",
            summary, human_seconds(WARN_SECONDS),
        )  # fmt: skip
    else:
        log.info("%s", summary)
    return total


class Progress:
    """Progress bars for an evaluation: ``overall`` (examples x runs) and the current model's. Disabled,
    every method is a no-op."""

    def __init__(self, enabled: bool, total: int = 0, *, file: IO[str] | None = None):
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.overall: Any = None
        self.model_bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.overall = tqdm(
                total=total, unit="ex", unit_scale=True, dynamic_ncols=True, smoothing=0.1, desc="overall",
                file=self.file, position=0,
            )  # fmt: skip

    @property
    def n(self) -> int:
        return int(self.overall.n) if self.overall is not None else 0

    @property
    def total(self) -> int:
        return int(self.overall.total or 0) if self.overall is not None else 0

    def set_total(self, total: int) -> None:
        """The whole evaluation's work, once planned (examples x runs still to compute here)."""
        if self.overall is not None:
            self.overall.reset(total=total)

    def start_job(self, name: str, units: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.model_bar is not None:
            self.model_bar.close()
        self.model_bar = tqdm(
            total=units, unit="ex", unit_scale=True, dynamic_ncols=True, smoothing=0.1, desc=name,
            file=self.file, position=1, leave=False,
        )  # fmt: skip

    def start_run(self, label: str) -> None:
        if self.model_bar is not None:
            self.model_bar.set_postfix_str(label, refresh=False)

    def advance(self, n: int) -> None:
        for bar in (self.overall, self.model_bar):
            if bar is not None:
                bar.update(n)

    def close(self) -> None:
        for bar in (self.model_bar, self.overall):
            if bar is not None:
                bar.close()
        self.model_bar = self.overall = None
