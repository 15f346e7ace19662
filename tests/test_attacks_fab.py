"""FAB and FAB-T (robustarch.attacks.fab): the box-constrained projection against a generic solver (scipy)
and against AutoAttack's projections; exact smallest adversarial norms on an affine model; honest pass
counts; early stopping; restarts; and robust accuracy against AutoAttack's own FAB (pyautoattack, a test-only
oracle installed with --no-deps) on the small CNN trained on real Fashion-MNIST in ``test_attacks``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

import robustarch.attacks as ra
from robustarch.attacks.fab import boundary_step, lp_norm
from robustarch.errors import RobustarchError, UnknownNameError
from test_attacks import PassCounter, gen, trained_model_and_data

try:  # AutoAttack's own code, the oracle (a test-only dependency)
    from pyautoattack import fab_projections as aa_projections
    from pyautoattack.fab_pt import FABAttack_PT
except ImportError:  # pragma: no cover - exercised only without the oracle
    aa_projections = FABAttack_PT = None
needs_autoattack = pytest.mark.skipif(
    FABAttack_PT is None, reason="pyautoattack (test-only oracle) is absent"
)

FABS = ["fab", "fab-t"]
NORMS = ["Linf", "L2"]


def random_planes(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points in [0,1] (a fifth of their coordinates on the box faces), plane normals with some zero
    coordinates, and the affine function's values at the points: some planes within reach, some beyond
    the box."""
    g = gen(seed)
    points = torch.rand(n, dim, generator=g)
    points[:, : dim // 5] = points[:, : dim // 5].round()
    w = torch.randn(n, dim, generator=g)
    w[:, -1] = 0.0
    value = (w * (points - torch.rand(n, dim, generator=g))).sum(1) * 2 * torch.rand(n, generator=g)
    return points, w, value


def smallest_step(point: np.ndarray, w: np.ndarray, value: float, norm: str) -> float:
    """The norm of the smallest step onto {value + <w, d> = 0} within the box, from a generic solver (an LP
    for L-inf, SLSQP for L2); inf where the box keeps the plane out of reach."""
    dim = len(point)
    if norm == "Linf":  # variables (d, r): minimize r with |d_i| <= r
        c = np.r_[np.zeros(dim), 1.0]
        a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
        bounds = [(-p, 1 - p) for p in point] + [(0, None)]
        res = linprog(c, a_ub, np.zeros(2 * dim), np.r_[w, 0.0][None], [-value], bounds=bounds)
        return float(res.fun) if res.status == 0 else float("inf")
    cons = {"type": "eq", "fun": lambda d: value + w @ d, "jac": lambda d: w}
    res = minimize(
        lambda d: d @ d, np.zeros(dim), jac=lambda d: 2 * d, constraints=[cons],
        bounds=[(-p, 1 - p) for p in point], method="SLSQP", options={"ftol": 1e-12, "maxiter": 500},
    )  # fmt: skip
    return float(np.sqrt(res.fun)) if res.success and abs(value + w @ res.x) < 1e-6 else float("inf")


@pytest.mark.parametrize("norm", NORMS)
def test_boundary_step_is_the_smallest_step_to_the_plane(norm: str) -> None:
    points, w, value = random_planes(60, 8, seed=1)
    d = boundary_step(points.double(), w.double(), value.double(), norm)
    assert float((points + d).min()) >= -1e-12 and float((points + d).max()) <= 1 + 1e-12
    residual = value.double() + (w.double() * d).sum(1)
    reached = 0
    for i in range(len(points)):
        best = smallest_step(points[i].double().numpy(), w[i].double().numpy(), float(value[i]), norm)
        if np.isfinite(best):
            reached += 1
            assert abs(float(residual[i])) < 1e-9
            assert float(lp_norm(d[i : i + 1], norm)) == pytest.approx(best, abs=1e-6)
        else:  # out of reach: every coordinate that can help goes all the way to its box face
            helps = w[i] != 0
            face = (value[i] * w[i] < 0).double()  # 0 where the coordinate must decrease, else 1
            torch.testing.assert_close((points[i].double() + d[i])[helps], face[helps], atol=1e-12, rtol=0)
            assert torch.equal(d[i][~helps], torch.zeros_like(d[i][~helps]))
    assert 10 < reached < len(points)  # both cases are exercised


@needs_autoattack
@pytest.mark.parametrize("norm", NORMS)
def test_boundary_step_matches_autoattacks_projection(norm: str) -> None:
    points, w, value = random_planes(300, 784, seed=2)
    ref = {"Linf": aa_projections.projection_linf, "L2": aa_projections.projection_l2}[norm]
    theirs = ref(points, w, (w * points).sum(1) - value)  # AutoAttack takes the plane as <w, z> = b
    ours = boundary_step(points, w, value, norm)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ---- an affine model: exact minimal distances -------------------------------------------------------------
class Affine(nn.Module):
    """``f(x) = W x + b`` on flattened images: misclassification regions are half-spaces, so the smallest
    adversarial perturbation is the smallest step to the closest class's plane."""

    def __init__(self, classes: int, shape: tuple[int, int, int], seed: int):
        super().__init__()
        self.linear = nn.Linear(int(np.prod(shape)), classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=gen(seed)))
            self.linear.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def affine_setup(norm: str) -> tuple[Affine, torch.Tensor, torch.Tensor, np.ndarray]:
    """A 4-class affine model, images in [0.3, 0.7] labelled with its own predictions, and each image's
    exact smallest adversarial norm (the generic solver over the three other classes' planes)."""
    model = Affine(4, (1, 3, 3), seed=3).eval()
    x = 0.3 + 0.4 * torch.rand(40, 1, 3, 3, generator=gen(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    weight = model.linear.weight.double().numpy()
    dist = np.full(len(x), np.inf)
    for i in range(len(x)):
        xi = x[i].flatten().double().numpy()
        for j in range(4):
            if j != int(y[i]):
                w = weight[j] - weight[int(y[i])]
                dist[i] = min(dist[i], smallest_step(xi, w, float(w @ xi), norm))
    return model, x, y, dist


@pytest.mark.parametrize("norm", NORMS)
def test_fab_breaks_exactly_the_examples_within_eps_on_an_affine_model(norm: str) -> None:
    model, x, y, dist = affine_setup(norm)
    eps = float(np.median(dist))
    res = ra.create("fab", eps=eps, norm=norm, n_classes=4, steps=30).run(model, x, y)
    with torch.no_grad():
        broken = (model(res.adv).argmax(1) != y).numpy()
    found = lp_norm(res.adv - x, norm).numpy()
    assert not broken[dist > eps * (1 + 1e-5)].any()  # no adversarial point is closer than the closest one
    # the first step lands eta = 1.05 times the distance away; the backward steps then close in on it
    assert broken[dist < eps / 1.01].all()
    assert (found[broken] <= eps + 1e-6).all() and (found[broken] >= dist[broken] * (1 - 1e-5)).all()
    assert 0.3 < broken.mean() < 0.7


@pytest.mark.parametrize("name", FABS)
def test_broken_examples_leave_the_batch_at_once(name: str) -> None:
    """With an eps far beyond every example's distance, the first step breaks them all: one gradient pass
    and one check per example, not ``steps`` of them."""
    model, x, y, dist = affine_setup("Linf")
    params = {"n_classes": 4} if name == "fab" else {"n_target_classes": 3}
    counter = PassCounter(model).eval()
    res = ra.create(name, eps=min(1.0, 2 * float(dist.max())), steps=50, **params).run(counter, x, y)
    with torch.no_grad():
        assert bool((model(res.adv).argmax(1) != y).all())
    assert counter.grad_examples == len(x)
    assert counter.forward_examples == 2 * len(x)  # the clean prediction and the one check


class BackwardCounter(nn.Module):
    """Counts the example rows that flow backward through the model (one per row and backward pass), next to
    PassCounter's forward counts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.backward_examples = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(self._count)
        return self.model(x)

    def _count(self, grad: torch.Tensor) -> None:
        self.backward_examples += len(grad)


@pytest.mark.parametrize("name", FABS)
def test_declared_gradient_passes_count_every_jacobian_row(name: str) -> None:
    model, x, y, _ = trained_model_and_data()
    x, y = x[:16], y[:16]
    attack = ra.create(name, steps=4, **({"n_target_classes": 3} if name == "fab-t" else {}))
    backward = BackwardCounter(model).eval()
    forward = PassCounter(backward).eval()
    attack(forward, x, y)
    per_forward = 9 if name == "fab" else 1  # the other classes' Jacobian rows, or the target's
    assert backward.backward_examples == per_forward * forward.grad_examples > 0
    assert backward.backward_examples <= attack.traits.gradient_passes * len(x)
    assert forward.forward_examples <= attack.traits.forward_passes * len(x)


# ---- parameters, traits, names ----------------------------------------------------------------------------
def test_defaults_are_autoattacks() -> None:
    fab_t = ra.create("fab-t")
    expected = {"steps": 100, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9, "start_scale": 0.5}
    assert {k: fab_t.params[k] for k in expected} == expected
    assert fab_t.params["n_target_classes"] == 9 and fab_t.params["eps"] == pytest.approx(8 / 255)
    assert ra.create("fab", norm="L2").params["eps"] == 0.5  # the budget goes with the norm
    assert ra.create("fab-t", norm="L2", eps=0.25).params["eps"] == 0.25
    assert fab_t.describe() == "FAB-T (8/255, 9 targets, 100 steps)"
    assert ra.create("fab", norm="L2", restarts=5).describe() == "FAB (L2 0.5, 100 steps, 5 restarts)"
    traits = ra.create("fab", norm="L2", restarts=5).traits
    assert traits.norm == "L2" and traits.randomized and not traits.targeted
    assert traits.gradient_passes == 5 * 100 * 9
    assert fab_t.traits.gradient_passes == 9 * 100 and not fab_t.traits.randomized and fab_t.traits.targeted
    rebuilt = ra.from_record("fab-t", "standard", fab_t.params)
    assert rebuilt.params == fab_t.params and rebuilt.describe() == fab_t.describe()


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fab", {"norm": "L1"}, "unknown norm"),
        ("fab-t", {"steps": 0}, "steps must be >= 1"),
        ("fab", {"alpha_max": 1.5}, "alpha_max must be <= 1"),
        ("fab-t", {"beta": -0.1}, "beta must be >= 0"),
        ("fab", {"eta": float("inf")}, "finite"),
        ("fab", {"n_classes": 1}, "n_classes must be >= 2"),
        ("fab-t", {"n_target_classes": 0}, "n_target_classes must be >= 1"),
        ("fab-t", {"n_classes": 10}, "n_classes"),
    ],
)
def test_invalid_parameters_raise_clear_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(RobustarchError, match=message):
        ra.create(name, **params)


def test_norm_names_are_suggested() -> None:
    with pytest.raises(UnknownNameError, match="'Linf'"):
        ra.create("fab-t", norm="linf")


@pytest.mark.parametrize("name", FABS)
def test_labels_beyond_the_models_classes_are_refused(name: str) -> None:
    model, x, y, _ = affine_setup("Linf")
    attack = ra.create(name, **({"n_classes": 4} if name == "fab" else {}))
    with pytest.raises(RobustarchError, match="label 7 out of range for a model with 4 classes"):
        attack(model, x, torch.full_like(y, 7))


def test_untargeted_fab_says_how_many_classes_to_declare() -> None:
    model, x, y, _ = affine_setup("Linf")
    with pytest.raises(RobustarchError, match=r"create\('fab', n_classes=4\)"):
        ra.create("fab")(model, x, y)


# ---- restarts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORMS)
def test_restarts_combine_as_per_example_worst_case(norm: str) -> None:
    model, x, y, _ = trained_model_and_data()
    x, y = x[:48], y[:48]
    eps = {"Linf": 8 / 255, "L2": 0.5}[norm]
    one = ra.create("fab-t", norm=norm, eps=eps, steps=10, n_target_classes=2)(model, x, y, gen(0))
    three = ra.create("fab-t", norm=norm, eps=eps, steps=10, n_target_classes=2, restarts=3)
    adv = three(model, x, y, gen(0))
    with torch.no_grad():
        broken1, broken3 = model(one).argmax(1) != y, model(adv).argmax(1) != y
        correct = model(x).argmax(1) == y
    assert bool((broken3 | ~broken1).all())  # the first run starts at x and draws nothing: same as one run
    assert bool((lp_norm(adv - x, norm) <= eps + 1e-6).all())
    assert torch.equal(adv[~correct], x[~correct])  # misclassified examples are returned clean
    unbroken = correct & ~broken3
    assert torch.equal(adv[unbroken], x[unbroken])  # so are the ones FAB could not break


class StartRecorder(nn.Module):
    """Keeps a copy of every input the model is differentiated at."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            self.inputs.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("norm", NORMS)
def test_later_restarts_start_at_random_points_start_scale_eps_away(norm: str) -> None:
    model, x, y, dist = affine_setup(norm)
    eps = float(dist.min()) / 2  # nothing breaks: every run goes the full length
    starts = []
    for seed in (5, 5, 6):
        recorder = StartRecorder(model).eval()
        ra.create("fab", norm=norm, eps=eps, n_classes=4, steps=2, restarts=3)(recorder, x, y, gen(seed))
        assert len(recorder.inputs) == 3 * 2
        starts.append(recorder.inputs[::2])  # the first iterate of each run
    first, second, third = starts[0]
    assert torch.equal(first, x)  # the first run starts at the image itself
    for start in (second, third):  # x lies in [0.3, 0.7]: the start is not clipped
        torch.testing.assert_close(lp_norm(start - x, norm), torch.full((len(x),), 0.5 * eps))
    assert not torch.equal(second, third)
    assert all(torch.equal(a, b) for a, b in zip(starts[0], starts[1], strict=True))  # the generator decides
    assert not torch.equal(starts[0][1], starts[2][1])


# ---- against AutoAttack's own FAB -------------------------------------------------------------------------
EPS = {"Linf": 16 / 255, "L2": 1.0}  # where the small CNN's robust accuracy is well between 0 and clean


def robust_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, norm: str, eps: float
):
    """Per example: still correct, or the returned point is beyond eps (AutoAttack's decision)."""
    with torch.no_grad():
        correct = model(adv).argmax(1) == y
    return correct | (lp_norm(adv - x, norm) > eps + 1e-6)


def compare_with_autoattack(name: str, norm: str, n: int, steps: int) -> tuple[float, float, float]:
    """(our robust accuracy, AutoAttack's, per-example agreement) for FAB-T (9 targets) or FAB."""
    model, x, y, trained = trained_model_and_data()
    if not trained:
        pytest.skip(
            "needs the Fashion-MNIST files for a trained model (robust accuracy means little otherwise)"
        )
    x, y, eps = x[:n], y[:n], EPS[norm]
    ours = ra.create(name, norm=norm, eps=eps, steps=steps)(model, x, y, gen(0))
    theirs = FABAttack_PT(
        model, norm=norm, n_restarts=1, n_iter=steps, eps=eps, targeted=name == "fab-t", n_target_classes=9,
        device=x.device,
    ).perturb(x, y)  # fmt: skip
    r_ours, r_theirs = (
        robust_flags(model, x, y, ours, norm, eps),
        robust_flags(model, x, y, theirs, norm, eps),
    )
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    robust, robust_theirs = float(r_ours.float().mean()), float(r_theirs.float().mean())
    agree = float((r_ours == r_theirs).float().mean())
    print(  # shown with pytest -s: the numbers docs/attacks.md reports
        f"{name} {norm} eps {eps:.4g}, {n} images, {steps} steps: clean {clean:.3f}, robust {robust:.3f} "
        f"(ours) {robust_theirs:.3f} (AutoAttack), agreement {agree:.3f}"
    )
    assert 0.1 < robust < clean - 0.2  # a telling comparison: FAB breaks many, not all
    return robust, robust_theirs, agree


@needs_autoattack
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", FABS)
def test_robust_accuracy_equals_autoattacks_fab(name: str, norm: str) -> None:
    ours, theirs, agree = compare_with_autoattack(name, norm, n=64, steps=10)
    assert abs(ours - theirs) <= 0.01 and agree >= 0.98


@needs_autoattack
@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_fab_t_robust_accuracy_equals_autoattacks_at_full_length(norm: str) -> None:
    """FAB-T as AutoAttack standard runs it (9 targets, 100 iterations) on 100 images: 1 pp = 1 image."""
    ours, theirs, agree = compare_with_autoattack("fab-t", norm, n=100, steps=100)
    assert abs(ours - theirs) <= 0.01 and agree >= 0.98
