"""An attack's independent runs (its restarts and targets) stacked into one batch.

AutoAttack runs APGD-T's and FAB-T's nine targets one after the other, each on the examples the earlier ones
left robust (Croce & Hein 2020, arXiv:2003.01690). Each run treats its rows independently, so ``k``
consecutive runs can share one batch of ``k x m`` rows (the ``m`` examples still robust when the stack
starts, once per run), and each example takes the output of the first of those runs that broke it, else
the last run's, as the sequence would give it.

Why: after APGD-CE the robust examples are a small part of the batch (17% in the benchmark of
``docs/benchmarks.md``), and small batches run far below a device's throughput. On that benchmark's 2-core
CPU nine targets of APGD-T or FAB-T ran 1.43-1.48x faster stacked (828 rows) than one after another (92);
on a GPU the gap is larger.

What may differ from the sequence: an example broken by one run of a stack is still attacked by the later
runs of the stack (wasted rows, never returned), and each run's random start is drawn for the ``m`` rows the
stack began with, where the sequence draws for the examples still robust at that run. While no example
breaks inside a stack, the draws, the iterates and the outputs are those of the sequence, bit for bit.

Stacking happens only inside :func:`row_budget` (the ``autoattack`` cascade opens one with its batch's
size, so a stack never holds more rows than the batch its first stage attacked); a direct call of an
attack runs its runs one after another. Square's ``autoattack`` variant uses the same budget to evaluate
several proposals per example in one batch (``Square._search_ahead``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

_BUDGET: ContextVar[int] = ContextVar("robustarch_row_budget", default=0)

# runs (a range of run indices) and the examples they attack -> (outputs, fooled) of len(runs) x len(todo)
# rows, run-major: rows [r * m, (r + 1) * m) are run r's
RunBlock = Callable[[range, Tensor], tuple[Tensor, Tensor]]


@contextlib.contextmanager
def row_budget(rows: int) -> Iterator[None]:
    """Inside the block, attacks stack consecutive runs into batches of up to ``rows`` rows."""
    token = _BUDGET.set(int(rows))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def runs_per_stack(remaining: int, examples: int) -> int:
    """How many of the ``remaining`` runs go in the next stack over ``examples`` rows each (at least 1)."""
    return max(1, min(remaining, _BUDGET.get() // max(examples, 1)))


def run_in_sequence(runs: int, todo: Tensor, adv: Tensor, attack: RunBlock) -> Tensor:
    """Runs ``0 .. runs - 1``, each on the examples of ``todo`` that every earlier run left unbroken,
    stacked as :func:`runs_per_stack` allows. Writes each attacked example's output into ``adv`` (the
    first run that broke it, else the last run's) and returns the examples still unbroken."""
    done = 0
    while done < runs and len(todo):
        m = len(todo)
        k = runs_per_stack(runs - done, m)
        out, fooled = attack(range(done, done + k), todo)
        out, fooled = out.view(k, m, *out.shape[1:]), fooled.view(k, m)
        broken = fooled.any(0)
        # argmax returns the first maximal index: the first run of the stack that broke the example
        pick = torch.where(broken, fooled.int().argmax(0), k - 1)
        adv[todo] = out[pick, torch.arange(m, device=todo.device)]
        todo = todo[~broken]
        done += k
    return todo


def repeat_rows(t: Tensor, k: int) -> Tensor:
    """``t`` stacked ``k`` times along the batch dimension."""
    return t.repeat(k, *([1] * (t.dim() - 1)))
