"""Cross-checks of robustarch.attacks against an independent implementation: torchattacks 3.5.1 (a test-only
oracle, installed with --no-deps), and for the ``paper`` StepLL, the torchattacks 1.3 formula written out
here independently. The model is the small CNN trained on real Fashion-MNIST in ``test_attacks``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustarch.attacks as ra
from test_attacks import accuracy, gen, trained_model_and_data

torchattacks = pytest.importorskip("torchattacks", reason="torchattacks (test-only oracle) is not installed")

ATOL = 1e-6  # float32 tolerance on [0,1] pixels


@pytest.fixture(scope="module")
def setup():
    model, x, y, trained = trained_model_and_data()
    return model, x[:64], y[:64], trained


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("profile", ["paper", "standard"])
@pytest.mark.parametrize("eps", [0.007, 8 / 255, 0.1])
def test_fgsm_matches_torchattacks(setup, profile: str, eps: float) -> None:
    model, x, y, _ = setup
    ours = ra.create("fgsm", profile, eps=eps)(model, x, y)
    ref = torchattacks.FGSM(model, eps=eps)(x, y)
    assert max_diff(ours, ref) <= ATOL


@pytest.mark.parametrize("profile", ["paper", "standard"])
@pytest.mark.parametrize(
    ("eps", "alpha", "steps"), [(8 / 255, 2 / 255, 10), (0.3, 0.007, 10), (0.05, 0.02, 7)]
)
def test_pgd_without_random_start_matches_torchattacks(setup, profile, eps, alpha, steps) -> None:
    model, x, y, _ = setup
    # the standard profile without early stopping: every example to the final iterate, as torchattacks
    old = {"early_stop": False} if profile == "standard" else {}
    ours = ra.create("pgd", profile, eps=eps, alpha=alpha, steps=steps, random_start=False, **old)(
        model, x, y
    )
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert max_diff(ours, ref) <= ATOL


@pytest.mark.parametrize(("eps", "alpha"), [(8 / 255, 2 / 255), (8 / 255, 8 / 255)])
def test_pgd_early_stop_is_torchattacks_until_an_example_breaks(setup, eps: float, alpha: float) -> None:
    """With early stopping (the standard default) an example no iterate breaks follows torchattacks'
    trajectory to the end; every example torchattacks' final iterate breaks is broken too."""
    model, x, y, _ = setup
    ours = ra.create("pgd", eps=eps, alpha=alpha, steps=10, random_start=False)(model, x, y)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=False)(x, y)
    with torch.no_grad():
        broken, ref_broken = model(ours).argmax(1) != y, model(ref).argmax(1) != y
    assert bool((broken | ~ref_broken).all())
    assert max_diff(ours[~broken], ref[~broken]) <= ATOL


def test_same_seed_gives_same_noise_as_torchattacks() -> None:
    # what the R-FGSM cross-check relies on: a Generator seeded s draws what the global RNG seeded s draws
    torch.manual_seed(11)
    a = torch.randn_like(torch.empty(4, 1, 5, 5))
    b = torch.randn((4, 1, 5, 5), generator=gen(11))
    assert torch.equal(a, b)


@pytest.mark.parametrize("alpha", [0.03, 8 / 255])
def test_paper_rfgsm_matches_torchattacks_one_step(setup, alpha: float) -> None:
    """1.3 R-FGSM with eps = 2*alpha, one step == torchattacks' RFGSM(eps, alpha, steps=1) given the same
    noise, wherever x +- alpha stays in [0,1] (1.3 does not clamp the random start; 3.5.1 does)."""
    model, x, y, _ = setup
    x = x * (1 - 2 * alpha) + alpha  # keep x +- alpha inside [0,1]
    ours = ra.create("rfgsm", "paper", eps=2 * alpha, alpha=alpha, steps=1)(model, x, y, generator=gen(5))
    torch.manual_seed(5)
    ref = torchattacks.RFGSM(model, eps=2 * alpha, alpha=alpha, steps=1)(x, y)
    assert max_diff(ours, ref) <= ATOL
    inner = (x > 2 * alpha) & (x < 1 - 2 * alpha)  # where no clipping can happen
    moved = (ours - x).abs()[inner]
    assert bool(((moved < 1e-6) | ((moved - 2 * alpha).abs() < 1e-6)).all())  # each pixel moves 0 or eps
    assert 0.2 < float((moved > 1e-6).float().mean()) < 0.8  # about half of them move


def test_standard_rfgsm_matches_torchattacks_one_step_on_any_image(setup) -> None:
    model, x, y, _ = setup
    eps, alpha = 8 / 255, 4 / 255
    ours = ra.create("rfgsm", "standard", eps=eps, alpha=alpha)(model, x, y, generator=gen(9))
    torch.manual_seed(9)
    ref = torchattacks.RFGSM(model, eps=eps, alpha=alpha, steps=1)(x, y)
    assert max_diff(ours, ref) <= ATOL


@pytest.mark.parametrize(("eps", "alpha", "steps"), [(8 / 255, 1 / 255, 0), (0.05, 0.01, 6)])
@pytest.mark.parametrize("early_stop", [False, True])
def test_standard_stepll_matches_bim_least_likely(
    setup, eps: float, alpha: float, steps: int, early_stop
) -> None:
    model, x, y, _ = setup
    attack = ra.create("stepll", "standard", eps=eps, alpha=alpha, steps=steps, early_stop=early_stop)
    ours = attack(model, x, y)
    bim = torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)
    bim.set_mode_targeted_least_likely(quiet=True)
    ref = bim(x, y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        broken, ref_broken = model(ours).argmax(1) != y, model(ref).argmax(1) != y
    assert int(correct.sum()) > len(y) // 2
    # without early stopping: BIM's iterates; with it: BIM's until an example breaks, and never weaker
    same = correct & ~broken if early_stop else correct
    assert max_diff(ours[same], ref[same]) <= ATOL
    assert bool((broken | ~(ref_broken & correct)).all())
    assert torch.equal(ours[~correct], x[~correct])  # already-misclassified examples are left alone


def stepll_13_reference(model, x: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """torchattacks 1.3 StepLL, from its documented formula: target = argmin of the clean logits (the true
    label not excluded), ``n = int(min(255*eps + 4, 1.25*255*eps))`` steps when steps == 0, each
    ``x <- clip01(x - alpha * sign(grad CE(f(x), target)))`` (its eps-clip around the current iterate is a
    no-op for alpha <= eps), no projection onto the ball around the original image."""
    n = steps if steps else int(min(255 * eps + 4, 1.25 * 255 * eps))
    with torch.no_grad():
        target = model(x).argmin(dim=1)
    cur = x.clone()
    for _ in range(n):
        cur.requires_grad_(True)
        loss = F.cross_entropy(model(cur), target)
        (g,) = torch.autograd.grad(loss, cur)
        cur = torch.clamp(cur.detach() - alpha * torch.sign(g), 0.0, 1.0)
    return cur


@pytest.mark.parametrize(
    ("eps", "alpha", "steps"), [(0.01, 0.003, 0), (4 / 255, 1 / 255, 0), (0.01, 0.004, 8)]
)
def test_paper_stepll_matches_the_13_formula(setup, eps: float, alpha: float, steps: int) -> None:
    model, x, y, _ = setup
    ours = ra.create("stepll", "paper", eps=eps, alpha=alpha, steps=steps).run(model, x, y)
    ref = stepll_13_reference(model, x, eps, alpha, steps)
    assert max_diff(ours.adv, ref) <= ATOL
    if steps:  # no projection: the perturbation exceeds eps when steps * alpha > eps
        assert ours.linf_max > eps


def success(model, x, y, adv) -> int:
    """Attack successes: initially correct examples that the attack makes misclassified."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(adv).argmax(1) != y
    return int((fooled & correct).sum())


# Both sides are randomized (different random starts / proposals); "at least the reference" allows one
# example of slack out of the ~50 initially correct ones.
SLACK = 1


@pytest.mark.parametrize("eps", [8 / 255, 16 / 255])
def test_apgd_ce_at_least_as_strong_as_torchattacks(setup, eps: float) -> None:
    model, x, y, trained = setup
    if not trained:
        pytest.skip(
            "needs the Fashion-MNIST files for a trained model (success rates are meaningless otherwise)"
        )
    ours = ra.create("apgd-ce", eps=eps, steps=25)(model, x, y, generator=gen(0))
    ref = torchattacks.APGD(model, eps=eps, steps=25, loss="ce", seed=0)(x, y)
    assert success(model, x, y, ours) >= success(model, x, y, ref) - SLACK
    assert float((ours - x).abs().max()) <= eps + 1e-6


def test_apgd_t_at_least_as_strong_as_torchattacks(setup) -> None:
    model, x, y, trained = setup
    if not trained:
        pytest.skip(
            "needs the Fashion-MNIST files for a trained model (success rates are meaningless otherwise)"
        )
    eps = 8 / 255
    # torchattacks targets the n_classes - 1 highest non-top classes: n_classes=4 -> the top 3 targets
    ours = ra.create("apgd-t", eps=eps, steps=10, n_target_classes=3)(model, x, y, generator=gen(0))
    ref = torchattacks.APGDT(model, eps=eps, steps=10, n_classes=4, seed=0)(x, y)
    assert success(model, x, y, ours) >= success(model, x, y, ref) - SLACK
    assert float((ours - x).abs().max()) <= eps + 1e-6


def test_square_at_least_as_strong_as_torchattacks(setup) -> None:
    model, x, y, trained = setup
    if not trained:
        pytest.skip(
            "needs the Fashion-MNIST files for a trained model (success rates are meaningless otherwise)"
        )
    eps = 16 / 255
    ours = ra.create("square", eps=eps, queries=100)(model, x, y, generator=gen(0))
    ref = torchattacks.Square(model, eps=eps, n_queries=100, seed=0)(x, y)
    assert success(model, x, y, ours) >= success(model, x, y, ref) - SLACK
    assert float((ours - x).abs().max()) <= eps + 1e-6
    assert accuracy(model, ours, y) <= accuracy(model, x, y)
