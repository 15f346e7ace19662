"""Stacked runs (``robustarch.attacks._runs``): the bookkeeping against the sequence it replaces, written
out here; every registered attack inside ``row_budget`` against itself outside it; the cascade's stacks."""

from __future__ import annotations

import pytest
import torch

import robustarch.attacks as ra
from robustarch.attacks._runs import run_in_sequence, runs_per_stack
from test_attacks import gen, trained_model_and_data

RUNS, EXAMPLES = 5, 10


def _breaks(run: int, example: int) -> bool:
    """A fixed pattern of which run breaks which example (some by several runs, some by none)."""
    return (run * 7 + example * 3) % 11 < 2


def _value(run: int, example: int) -> float:
    return 100.0 * run + example


def _sequence() -> tuple[torch.Tensor, list[int]]:
    """The runs one after another, each on the examples every earlier one left unbroken."""
    adv, todo = torch.full((EXAMPLES, 2), -1.0), list(range(EXAMPLES))
    for r in range(RUNS):
        for i in todo:
            adv[i] = _value(r, i)
        todo = [i for i in todo if not _breaks(r, i)]
    return adv, todo


@pytest.mark.parametrize("budget", [0, 9, 10, 25, 50, 1000])
def test_stacked_runs_give_what_the_sequence_gives(budget: int) -> None:
    stacks: list[tuple[int, int]] = []  # (runs, examples) of each stack

    def attack(runs: range, todo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacks.append((len(runs), len(todo)))
        out = torch.tensor([[_value(r, int(i))] * 2 for r in runs for i in todo])
        return out, torch.tensor([_breaks(r, int(i)) for r in runs for i in todo])

    adv = torch.full((EXAMPLES, 2), -1.0)
    with ra.row_budget(budget):
        todo = run_in_sequence(RUNS, torch.arange(EXAMPLES), adv, attack)
    want_adv, want_todo = _sequence()
    assert torch.equal(adv, want_adv)
    assert todo.tolist() == want_todo
    assert all(k == 1 or k * m <= budget for k, m in stacks)  # one run of all examples fits any budget
    assert sum(k for k, _ in stacks) == RUNS
    if budget >= RUNS * EXAMPLES:
        assert len(stacks) == 1  # every run in one stack
    if budget == 0:
        assert all(k == 1 for k, _ in stacks)


def test_no_budget_means_no_stacking_and_the_budget_is_scoped() -> None:
    assert runs_per_stack(9, 10) == 1
    with ra.row_budget(100):
        assert runs_per_stack(9, 10) == 9 and runs_per_stack(9, 30) == 3 and runs_per_stack(9, 200) == 1
        with ra.row_budget(20):
            assert runs_per_stack(9, 10) == 2
        assert runs_per_stack(9, 10) == 9
    assert runs_per_stack(9, 10) == 1


def _attack(name: str) -> ra.Attack:
    """A registered attack, made small where it has the knobs."""
    params = ra.attack_class(name).defaults["standard"]
    small = {
        "steps": 8,
        "queries": 30,
        "restarts": 2,
        "n_target_classes": 3,
        "eps": 3 / 255,
        "alpha": 1 / 255,
    }
    return ra.create(name, **{k: v for k, v in small.items() if k in params})


@pytest.fixture(scope="module")
def data() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y, _ = trained_model_and_data()
    return model, x[:32], y[:32]


@pytest.mark.parametrize("name", ra.list_attacks())
def test_an_attack_inside_a_row_budget_gives_what_it_gives_outside(data, name: str) -> None:
    """Stacking changes nothing for a deterministic attack, and for a randomized one while no example breaks
    inside a stack: a deterministic attack is compared on all 32 examples, a randomized one on examples
    narrowed until a run on them breaks none (so that no stack can contain a break)."""
    model, x, y = data
    attack = _attack(name)
    keep = torch.ones(len(x), dtype=torch.bool)
    for _ in range(4):
        xs, ys = x[keep], y[keep]
        plain = attack(model, xs, ys, generator=gen(3))
        with torch.no_grad():
            robust = model(plain).argmax(1) == ys
        if not attack.traits.randomized or bool(robust.all()):
            break
        keep[keep.clone()] = robust
    else:
        pytest.skip(f"{name}: no set of examples it leaves entirely robust within 4 narrowings")
    with ra.row_budget(8 * len(xs)):
        stacked = attack(model, xs, ys, generator=gen(3))
    assert torch.equal(stacked, plain)


def test_the_cascade_stacks_targets_within_its_batch(data) -> None:
    """APGD-T's and FAB-T's targets run in batches larger than the examples they attack, never larger than
    the batch the cascade was given."""
    model, x, y = data
    rows: list[int] = []

    def recording(t: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and t.requires_grad:
            rows.append(len(t))
        return model(t)

    attack = ra.create("autoattack", eps=8 / 255, steps=4, queries=5, n_target_classes=9)
    res = attack.run(recording, x, y, generator=gen(0))
    robust_after_ce = len(x) - res.extras["contributions"]["apgd-ce"]
    with torch.no_grad():
        robust_after_ce -= int((model(x).argmax(1) != y).sum())
    assert 0 < robust_after_ce <= len(x) // 2  # room for two targets per stack
    assert max(rows) <= len(x)
    assert max(rows) >= 2 * robust_after_ce  # APGD-T's first stack starts with every row it holds


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_square_looking_ahead_ends_where_the_one_at_a_time_search_does(data, eps: float) -> None:
    """Square's shared-window variant evaluates several proposals per example at once inside a row budget:
    every example ends at the same point after the same number of queries (also those it breaks)."""
    model, x, y = data
    attack = ra.create("square", variant="autoattack", queries=200, eps=eps)
    plain = attack.run(model, x, y, generator=gen(5))
    for budget in (3 * len(x), 40 * len(x)):
        with ra.row_budget(budget):
            ahead = attack.run(model, x, y, generator=gen(5))
        assert torch.equal(ahead.adv, plain.adv)
        assert torch.equal(ahead.extras["queries"], plain.extras["queries"])
    with torch.no_grad():
        broken = model(plain.adv).argmax(1) != y
    assert 0 < int(broken.sum()) < len(y)  # both kinds of examples are compared
