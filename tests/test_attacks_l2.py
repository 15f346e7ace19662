"""The L2 threat model (``norm="L2"``, standard profile) of PGD, APGD-CE/-DLR/-T, Square and the AutoAttack
cascade: budgets, projections, starts and names; PGD against torchattacks' PGDL2 (an independent
implementation of Madry et al.'s L2 PGD). APGD's and Square's L2 against AutoAttack's own code are in
tests/test_autoattack.py, the registry-wide properties (budget respected, eps = 0, reproducibility, traits)
in tests/test_attacks.py."""

from __future__ import annotations

import pytest
import torch

import robustarch.attacks as ra
from robustarch.attacks._base import project_l2
from robustarch.errors import RobustarchError
from test_attacks import accuracy, gen, trained_model_and_data

L2_ATTACKS = [
    name for name in ra.list_attacks() if "L2" in ra.attack_class(name).parameter_choices().get("norm", ())
]


@pytest.fixture(scope="module")
def setup():
    model, x, y, trained = trained_model_and_data()
    return model, x[:64], y[:64], trained


def test_l2_is_offered_where_the_issue_asks_and_only_in_the_standard_profile() -> None:
    assert {"pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack"} <= set(L2_ATTACKS)
    assert "norm" not in ra.create("pgd", "paper").params  # the study's profile stays L-inf only
    with pytest.raises(RobustarchError, match="parameter of attack 'pgd' \\(paper profile\\)"):
        ra.create("pgd", "paper", norm="L2")


@pytest.mark.parametrize("name", L2_ATTACKS)
def test_l2_defaults_names_and_budget_range(name: str) -> None:
    extra = {"version": "rand"} if name == "autoattack" else {}
    attack = ra.create(name, norm="L2", **extra)
    assert attack.params["eps"] == ra.L2_EPS_DEFAULT == 0.5  # RobustBench's CIFAR-10 L2 budget
    assert attack.traits.norm == attack.threat_norm() == "L2"
    assert "L2 0.5" in attack.describe() and "/255" not in attack.describe()
    assert ra.create(name, norm="L2", eps=2.5, **extra).params["eps"] == 2.5  # an L2 budget may exceed 1
    with pytest.raises(RobustarchError, match="eps must be <= 1"):
        ra.create(name, eps=2.5, **extra)  # an L-inf one may not


def test_pgd_l2_step_defaults_to_a_quarter_of_eps() -> None:
    assert ra.create("pgd", norm="L2").params["alpha"] == 0.125
    assert ra.create("pgd", norm="L2", eps=1.0).params["alpha"] == 0.25
    assert ra.create("pgd", norm="L2", eps=1.0, alpha=0.1).params["alpha"] == 0.1  # given: kept
    assert ra.create("pgd").params["alpha"] == 2 / 255  # L-inf: unchanged


def test_projection_onto_the_l2_ball() -> None:
    x = torch.rand(6, 3, 8, 8, generator=gen(0)) * 0.5 + 0.25
    small = x + 0.01 * torch.randn(6, 3, 8, 8, generator=gen(1)) / 8
    assert torch.equal(project_l2(small, x, 1.0), small.clamp(0, 1))  # inside the ball: untouched
    far = x + torch.randn(6, 3, 8, 8, generator=gen(2)) * 0.01
    far = x + (far - x) / (far - x).flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.2  # norm 0.2, in [0,1]
    out = project_l2(far, x, 0.1)
    torch.testing.assert_close((out - x).flatten(1).norm(dim=1), torch.full((6,), 0.1), rtol=1e-5, atol=0)
    torch.testing.assert_close(out - x, (far - x) / 2, rtol=1e-5, atol=1e-7)  # same direction, scaled


def test_pgd_l2_random_start_is_on_the_sphere(setup) -> None:
    model, x, y, _ = setup
    x = x * 0.5 + 0.25  # far enough from 0 and 1 that [0,1] never clips the start
    res = ra.create("pgd", norm="L2", eps=0.5, steps=0).run(model, x, y, generator=gen(0))
    torch.testing.assert_close(res.l2, torch.full((len(x),), 0.5), rtol=1e-5, atol=0)
    assert "L2 max 0.5" in res.summary()


def test_pgd_l2_without_random_start_matches_torchattacks(setup) -> None:
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks (test-only oracle) is not installed"
    )
    model, x, y, _ = setup
    for eps, alpha, steps in ((0.5, 0.1, 10), (1.0, 0.3, 7)):
        ours = ra.create(
            "pgd", norm="L2", eps=eps, alpha=alpha, steps=steps, random_start=False, early_stop=False
        )(model, x, y)
        ref = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
        assert float((ours - ref).abs().max()) <= 1e-6


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_l2_attacks_get_stronger_with_the_budget(setup, name: str) -> None:
    model, x, y, trained = setup
    fast = {"square": {"queries": 100}, "apgd-ce": {"steps": 20}}.get(name, {})
    acc = [
        accuracy(model, ra.create(name, norm="L2", eps=eps, **fast)(model, x, y, generator=gen(0)), y)
        for eps in (0.0, 0.25, 1.0, 2.0)
    ]
    assert acc[0] == accuracy(model, x, y)
    assert acc == sorted(acc, reverse=True)
    if trained:
        assert acc[-1] < acc[0] - 0.2


def test_square_l2_needs_images_of_at_least_5x5() -> None:
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = torch.rand(4, 1, 4, 4, generator=gen(0))
    with pytest.raises(RobustarchError, match="at least 5x5"):
        ra.create("square", norm="L2")(tiny, x, tiny(x).argmax(1))
