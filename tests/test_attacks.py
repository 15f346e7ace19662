"""Property tests for every registered attack and profile (robustarch.attacks), the presets, the
normalized-input flaw switch, input/parameter validation, reproducibility, and robustarch.runtime.

The model is a small CNN trained for a few seconds on real Fashion-MNIST (Debian's dataset-fashion-mnist);
without those files the tests fall back to a seeded untrained CNN on seeded random images (the properties
still hold, they are just less telling).
"""

from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustarch.attacks as ra
from models_for_tests import tiny_cnn
from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo import Normalized

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)

# Cheaper settings for the slow attacks so the whole file stays fast on 2 cores; other attacks (and any
# attack added later) run with their defaults.
FAST = {
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 5, "n_target_classes": 2},
    "square": {"queries": 50},
    "fab": {"steps": 10},
    "fab-t": {"steps": 10, "n_target_classes": 2},
    "autoattack": {"steps": 5, "n_target_classes": 2, "queries": 50},
}
PAIRS = [(name, profile) for name in ra.list_attacks() for profile in ra.attack_profiles(name)]


def _cases() -> list:
    """Every attack x profile with its defaults, then with each other value of each enumerated parameter
    the class declares (``norm="L2"``, Square's ``variant``, AutoAttack's ``version``), one at a time; a
    configuration this installation cannot build (a cascade whose stage is not registered) is skipped
    with the registry's reason."""
    cases = []
    for name, profile in PAIRS:
        cls = ra.attack_class(name)
        variants: list[dict] = [{}]
        for key, values in cls.parameter_choices(profile).items():
            variants += [{key: v} for v in values if v != cls.defaults[profile][key]]
        for params in variants:
            reason = ra.unavailable_reason(name, **params)
            tag = "".join(f"-{v}" for v in params.values())
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            cases.append(pytest.param(name, profile, params, id=f"{name}-{profile}{tag}", marks=marks))
    return cases


CASES = _cases()


def read_idx(path: Path) -> np.ndarray:
    """An idx file (Fashion-MNIST's format): big-endian dims after a 4-byte magic whose last byte is ndim."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=1)
def trained_model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor, bool]:
    """(model in eval mode taking [0,1], test images, test labels, trained-on-real-data flag); cached so every
    test module shares one training run."""
    torch.manual_seed(0)
    net = tiny_cnn()
    model = Normalized(net, FASHION_MEAN, FASHION_STD)
    files = [
        FASHION / f
        for f in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    ]
    if not all(f.exists() for f in files):
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(256, 1, 28, 28, generator=gen)
        y = torch.randint(10, (256,), generator=gen)
        return model.eval(), x, y, False
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    xtr = torch.from_numpy(xtr[:4000].copy()).float().div(255).unsqueeze(1)
    ytr = torch.from_numpy(ytr[:4000].astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _epoch in range(1):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 100):
            idx = perm[i : i + 100]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    xte = torch.from_numpy(xte[:512].copy()).float().div(255).unsqueeze(1)
    yte = torch.from_numpy(yte[:512].astype(np.int64))
    return model, xte, yte, True


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y, _ = trained_model_and_data()
    return model, x[:64], y[:64]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def make(name: str, profile: str, **params: object) -> ra.Attack:
    return ra.create(name, profile, **{**FAST.get(name, {}), **params})


def norms(adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example perturbation sizes in the threat model's norm."""
    delta = (adv - x).flatten(1)
    return delta.norm(dim=1) if norm == "L2" else delta.abs().amax(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- registry -----------------------------------------------------------------------------------------
def test_registry_lists_the_study_attacks_and_stronger_ones() -> None:
    assert {"fgsm", "rfgsm", "stepll", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack"} <= set(
        ra.list_attacks()
    )
    assert set(ra.list_attacks("paper")) == {"fgsm", "rfgsm", "stepll", "pgd"}
    for name in ra.list_attacks():
        assert "standard" in ra.attack_profiles(name)


@pytest.mark.parametrize(
    ("call", "suggestion"),
    [
        (lambda: ra.create("pdg"), "pgd"),
        (lambda: ra.create("apgd_ce"), "apgd-ce"),
        (lambda: ra.create("fgsm", profile="papr"), "paper"),
        (lambda: ra.create("pgd", epsilon=0.1), "eps"),
        (lambda: ra.create("pgd", random_strat=True), "random_start"),
        (lambda: ra.preset("standrd", "cifar10"), "standard"),
        (lambda: ra.attack_profiles("squar"), "square"),
        (lambda: ra.create("pgd", norm="l2"), "L2"),
        (lambda: ra.create("apgd-ce", norm="linf"), "Linf"),
        (lambda: ra.create("square", variant="autoatack"), "autoattack"),
        (lambda: ra.create("autoattack", version="rnd"), "rand"),
        (lambda: ra.preset("autoattak", "cifar10"), "autoattack"),
    ],
)
def test_unknown_names_suggest_close_names(call, suggestion: str) -> None:
    with pytest.raises(UnknownNameError) as err:
        call()
    assert f"'{suggestion}'" in str(err.value)


def test_paper_profile_only_for_the_study_attacks() -> None:
    with pytest.raises(RobustarchError, match="no 'paper' profile"):
        ra.create("apgd-ce", "paper")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fgsm", {"eps": -0.1}, "eps must be >= 0"),
        ("fgsm", {"eps": 1.5}, "eps must be <= 1"),
        ("fgsm", {"eps": float("nan")}, "finite"),
        ("fgsm", {"eps": "0.1"}, "finite number"),
        ("pgd", {"steps": -1}, "steps must be >= 0"),
        ("pgd", {"steps": 2.5}, "integer"),
        ("pgd", {"alpha": -0.01}, "alpha must be >= 0"),
        ("pgd", {"random_start": "yes"}, "True or False"),
        ("pgd", {"restarts": 0}, "restarts must be >= 1"),
        ("pgd", {"restarts": 3, "random_start": False}, "random_start"),
        ("rfgsm", {"eps": 0.01, "alpha": 0.02}, "must not exceed eps"),
        ("rfgsm", {"steps": 0}, "steps must be >= 1"),
        ("apgd-ce", {"rho": 2.0}, "rho must be <= 1"),
        ("apgd-t", {"n_target_classes": 0}, "n_target_classes must be >= 1"),
        ("square", {"queries": 0}, "queries must be >= 1"),
        ("pgd", {"eot_samples": 0}, "eot_samples must be >= 1"),
        ("apgd-ce", {"early_stop": 1}, "True or False"),
        ("fgsm", {"eps": 1.5, "norm": "L2"}, "parameter of attack 'fgsm'"),
        ("pgd", {"eps": -0.5, "norm": "L2"}, "eps must be >= 0"),
        ("autoattack", {"version": "rand", "steps": 0}, "steps must be >= 1"),
        ("fgsm", {"mean": (0.5,)}, "both mean and std"),
        ("fgsm", {"mean": (0.5,), "std": (0.5,)}, "only used with emulate_normalized_inputs"),
    ],
)
def test_invalid_parameters_raise_clear_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(RobustarchError, match=message):
        ra.create(name, **params)


def test_paper_pgd_runs_once() -> None:
    with pytest.raises(RobustarchError, match="restarts must be 1"):
        ra.create("pgd", "paper", restarts=2, random_start=True)


# ---- input validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "profile", "variant"), CASES)
def test_inputs_outside_unit_range_are_refused(setup, name: str, profile: str, variant: dict) -> None:
    model, x, y = setup
    attack = make(name, profile, **variant)
    normalized = (x - FASHION_MEAN[0]) / FASHION_STD[0]
    with pytest.raises(RobustarchError, match=r"must lie in \[0,1\]"):
        attack(model, normalized, y)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.rand(4, 28, 28), torch.zeros(4, dtype=torch.long), "shape"),
        (torch.rand(4, 1, 28, 28), torch.zeros(5, dtype=torch.long), "labels must have shape"),
        (torch.rand(4, 1, 28, 28), torch.zeros(4), "integer class indices"),
        ((torch.rand(4, 1, 28, 28) * 255).to(torch.uint8), torch.zeros(4, dtype=torch.long), "floating"),
        (torch.full((4, 1, 28, 28), float("nan")), torch.zeros(4, dtype=torch.long), "NaN"),
        (torch.rand(4, 1, 28, 28), torch.full((4,), 10), "out of range"),
        (torch.rand(4, 1, 28, 28), torch.full((4,), -1), "non-negative"),
    ],
)
def test_bad_inputs_raise_clear_errors(setup, images, labels, message: str) -> None:
    model = setup[0]
    with pytest.raises(RobustarchError, match=message):
        ra.create("fgsm")(model, images, labels)


def test_model_in_training_mode_is_refused(setup) -> None:
    _, x, y = setup
    model = Normalized(tiny_cnn(), FASHION_MEAN, FASHION_STD)  # fresh module: train mode
    with pytest.raises(RobustarchError, match=r"model\.eval\(\)"):
        ra.create("pgd")(model, x, y)
    model.eval()
    model.net[1].train()  # one BatchNorm left in train mode is just as wrong
    with pytest.raises(RobustarchError, match="training mode"):
        ra.create("pgd")(model, x, y)


# ---- properties for every attack x profile ----------------------------------------------------------------
@pytest.mark.parametrize(("name", "profile", "variant"), CASES)
def test_properties(setup, name: str, profile: str, variant: dict) -> None:
    model, x, y = setup
    x_before, y_before = x.clone(), y.clone()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = make(name, profile, **variant)
    result = attack.run(model, x, y, generator=gen(1))
    adv = result.adv
    # shape, range, dtype; caller's tensors and model untouched
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert torch.equal(x, x_before) and torch.equal(y, y_before) and not x.requires_grad
    assert not model.training
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    # realized norms are reported and (standard profile) within the budget of the threat model's norm
    assert torch.allclose(result.linf, norms(adv, x, "Linf")) and result.eps == attack.params["eps"]
    assert torch.allclose(result.l2, norms(adv, x, "L2")) and result.norm == attack.traits.norm
    if profile == "standard":
        assert float(norms(adv, x, result.norm).max()) <= attack.params["eps"] * (1 + 1e-6) + 1e-7
        assert result.norm_max == pytest.approx(float(norms(adv, x, result.norm).max()), rel=1e-6)
    # the attack does not help the model, and (at the standard budget) it works on the trained model
    clean, robust = accuracy(model, x, y), accuracy(model, adv, y)
    if (name, profile) != ("stepll", "paper"):
        # torchattacks 1.3's StepLL also steps already-misclassified examples towards the least-likely
        # class, which can flip them to correct: faithful to the study, so exempt (see docs/attacks.md)
        assert robust <= clean
    if trained_model_and_data()[3] and profile == "standard":
        assert robust < clean


@pytest.mark.parametrize(("name", "profile", "variant"), CASES)
def test_eps_zero_gives_back_clean_images(setup, name: str, profile: str, variant: dict) -> None:
    model, x, y = setup
    zero = {**variant, "eps": 0.0}
    if "alpha" in ra.create(name, profile, **variant).params:
        zero["alpha"] = 0.0
    adv = make(name, profile, **zero)(model, x, y, generator=gen(2))
    assert torch.equal(adv, x)
    assert accuracy(model, adv, y) == accuracy(model, x, y)


@pytest.mark.parametrize(("name", "profile", "variant"), CASES)
def test_reproducible_from_a_generator(setup, name: str, profile: str, variant: dict) -> None:
    model, x, y = setup
    x, y = x[:16], y[:16]
    attack = make(name, profile, **variant)
    a1 = attack(model, x, y, generator=gen(7))
    a2 = attack(model, x, y, generator=gen(7))
    assert torch.equal(a1, a2)
    torch.manual_seed(3)
    g1 = attack(model, x, y)
    torch.manual_seed(3)
    g2 = attack(model, x, y)
    assert torch.equal(g1, g2)  # generator=None: the global RNG, seeded by torch.manual_seed


class PassCounter(nn.Module):
    """Counts the examples the model sees with and without autograd (gradient and forward passes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.grad_examples, self.forward_examples = model, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_examples += len(x)
        else:
            self.forward_examples += len(x)
        return self.model(x)


@pytest.mark.parametrize(("name", "profile", "variant"), CASES)
def test_declared_traits_hold(setup, name: str, profile: str, variant: dict) -> None:
    """What each attack class declares about itself (randomized, per-example, pass counts) is what it does:
    the engine skips examples and the cost estimate counts passes from these declarations alone."""
    model, x, y = setup
    x, y = x[:16], y[:16]
    attack = make(name, profile, **variant)
    traits = attack.traits
    assert traits.box in ("white", "black") and traits.norm in ra.NORMS
    assert traits.norm == variant.get("norm", "Linf") and (traits.norm == "L2") == ("L2" in attack.describe())
    assert attack.title and "{" not in attack.describe() and attack.describe().startswith(attack.title)
    a1, a2 = attack(model, x, y, generator=gen(1)), attack(model, x, y, generator=gen(2))
    assert torch.equal(a1, a2) != traits.randomized  # a randomized attack uses its generator, others not
    if traits.per_example:  # an example's result does not depend on the rest of its batch
        part = attack(model, x[:5], y[:5], generator=gen(1))
        assert torch.allclose(part, a1[:5], atol=1e-6)
    counter = PassCounter(model).eval()
    attack(counter, x, y, generator=gen(1))
    assert counter.grad_examples <= traits.gradient_passes * len(x)
    assert counter.forward_examples <= traits.forward_passes * len(x)
    assert (counter.grad_examples > 0) == (traits.box == "white")
    if traits.one_step:
        assert counter.grad_examples == len(x)


def _inside_shared_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list) -> list:
    """Each attack's result (generator seed 1) on a copy of ``x``, all inside one shared_passes block."""
    with torch.no_grad():
        logits = model(x)
    with ra.shared_passes(model, x, logits):
        return [a(model, x.clone(), y, generator=gen(1)) for a in attacks]


@pytest.mark.parametrize(("name", "profile", "variant"), CASES)
def test_shared_passes_change_no_result(setup, name: str, profile: str, variant: dict) -> None:
    """Inside shared_passes an attack returns what it returns alone, bit for bit, run once or twice, and
    never takes more passes."""
    model, x, y = setup
    x, y = x[:16], y[:16]
    attack = make(name, profile, **variant)
    alone_counter = PassCounter(model).eval()
    alone = attack(alone_counter, x, y, generator=gen(1))
    shared_counter = PassCounter(model).eval()
    first, again = _inside_shared_passes(shared_counter, x, y, [attack, attack])
    assert torch.equal(first, alone) and torch.equal(again, alone)
    clean_forward = len(x)
    assert shared_counter.grad_examples <= 2 * alone_counter.grad_examples
    assert shared_counter.forward_examples - clean_forward <= 2 * alone_counter.forward_examples


def test_shared_passes_save_the_paper_presets_repeated_passes(setup) -> None:
    """In the paper preset PGD's first gradient is FGSM's and StepLL's clean forward is the caller's:
    with sharing the four attacks take one gradient pass and one forward pass fewer per example, and
    return the same bits."""
    model, x, y = setup
    attacks = [ra.create(name, "paper") for name in ("fgsm", "rfgsm", "stepll", "pgd")]
    alone_counter = PassCounter(model).eval()
    alone = [a(alone_counter, x, y, generator=gen(1)) for a in attacks]
    shared_counter = PassCounter(model).eval()
    shared = _inside_shared_passes(shared_counter, x, y, attacks)
    assert all(torch.equal(a, b) for a, b in zip(alone, shared, strict=True))
    assert shared_counter.grad_examples == alone_counter.grad_examples - len(x)
    # StepLL's clean forward is the caller's: one forward saved, one (the caller's clean forward) added
    assert shared_counter.forward_examples == alone_counter.forward_examples


def test_shared_passes_compute_everything_afresh_for_a_randomized_model(setup) -> None:
    """A model whose two forwards at x differ (new noise each time) gets no shared pass: every attack
    draws its own, as without sharing."""
    from models_for_tests import NoisyLogits

    model, x, y = setup
    noisy = NoisyLogits(model).eval()
    attacks = [ra.create(name, "paper") for name in ("fgsm", "stepll", "pgd")]
    alone_counter = PassCounter(noisy).eval()
    for a in attacks:
        a(alone_counter, x, y, generator=gen(1))
    shared_counter = PassCounter(noisy).eval()
    _inside_shared_passes(shared_counter, x, y, attacks)
    assert shared_counter.grad_examples == alone_counter.grad_examples
    assert shared_counter.forward_examples == alone_counter.forward_examples + len(x)  # + the clean forward


def test_shared_passes_need_the_same_model_and_input(setup) -> None:
    model, x, y = setup
    fgsm = ra.create("fgsm", "paper")
    counter, other = PassCounter(model).eval(), PassCounter(model).eval()
    with torch.no_grad():
        logits = counter(x)
    with ra.shared_passes(counter, x, logits):
        fgsm(counter, x, y)
        fgsm(counter, x, y)  # shared
        fgsm(other, x, y)  # another model object: its own pass
        fgsm(counter, (x + 1e-3).clamp(0, 1), y)  # another input: its own pass
    assert counter.grad_examples == 2 * len(x) and other.grad_examples == len(x)


def test_iterative_stronger_than_one_step_and_black_box_weaker_than_white_box(setup) -> None:
    model, x, y = setup
    x, y = x[:64], y[:64]
    eps = 0.1
    fgsm = accuracy(model, ra.create("fgsm", eps=eps)(model, x, y), y)
    pgd = accuracy(model, ra.create("pgd", eps=eps, alpha=eps / 4, steps=10)(model, x, y, gen(0)), y)
    apgd = accuracy(model, ra.create("apgd-ce", eps=eps, steps=20)(model, x, y, gen(0)), y)
    noise = (x + eps * torch.where(torch.rand(x.shape, generator=gen(0)) < 0.5, -1.0, 1.0)).clamp(0, 1)
    square = accuracy(model, ra.create("square", eps=eps, queries=50)(model, x, y, gen(0)), y)
    assert pgd <= fgsm
    assert apgd <= pgd + 2 / len(x)
    assert pgd < accuracy(model, noise, y)
    assert square >= apgd  # no gradient masking: the score-based attack is not the stronger one


def test_pgd_restarts_combine_as_per_example_worst_case(setup) -> None:
    model, x, y = setup
    one = ra.create("pgd", eps=0.05, alpha=0.01, steps=5, restarts=1)
    three = ra.create("pgd", eps=0.05, alpha=0.01, steps=5, restarts=3)
    adv1, res3 = one(model, x, y, gen(5)), three.run(model, x, y, gen(5))
    broken1 = model(adv1).argmax(1) != y
    broken3 = model(res3.adv).argmax(1) != y
    # the first restart draws exactly what the single run draws, so nothing it broke is lost
    assert bool((broken3 | ~broken1).all())
    assert int(broken3.sum()) >= int(broken1.sum())
    assert res3.linf_max <= 0.05 + 1e-6


def test_stepll_profiles_differ_as_documented(setup) -> None:
    model, x, y = setup
    paper = ra.create("stepll", "paper").run(model, x, y)
    assert paper.params["steps"] == 0
    assert math.isclose(paper.linf_max, 3 * 0.003, rel_tol=1e-4)  # n = int(min(2.55 + 4, 3.19)) = 3
    standard = ra.create("stepll", eps=0.01, alpha=0.005, steps=5).run(model, x, y)
    assert standard.linf_max <= 0.01 + 1e-6
    assert bool((standard.extras["target"] != y).all())  # true label excluded from the targets


def test_paper_pgd_budget_never_binds(setup) -> None:
    model, x, y = setup
    res = ra.create("pgd", "paper").run(model, x, y)
    assert res.eps == 0.3 and res.linf_max <= 10 * 0.007 + 1e-6  # the study's "eps 0.3" PGD moves <= 0.07


# ---- the released code's flaw: attacking normalized tensors ----------------------------------------
def test_emulated_flaw_matches_a_hand_computation(setup) -> None:
    model, x, y = setup
    eps = 0.007
    res = ra.create("fgsm", "paper", eps=eps, emulate_normalized_inputs=True).run(model, x, y)
    mean, std = FASHION_MEAN[0], FASHION_STD[0]
    z = ((x - mean) / std).requires_grad_(True)
    loss = nn.functional.cross_entropy(model.net(z), y)
    (grad,) = torch.autograd.grad(loss, z)
    z_adv = (z.detach() + eps * grad.sign()).clamp(0, 1)  # eps and clamp in normalized units
    assert torch.allclose(res.adv, z_adv * std + mean, atol=1e-6)
    assert res.emulated_normalized_inputs and "EMULATED" in res.summary()


def test_emulated_flaw_changes_images_even_at_eps_zero(setup) -> None:
    model, x, y = setup
    res = ra.create("pgd", "paper", eps=0.0, alpha=0.0, emulate_normalized_inputs=True).run(model, x, y)
    mean, std = FASHION_MEAN[0], FASHION_STD[0]
    assert res.linf_max > 0.3  # the clamp alone maps every pixel into [mean, mean + std]
    assert float(res.adv.min()) >= mean - 1e-6 and float(res.adv.max()) <= mean + std + 1e-6
    explicit = ra.create(
        "pgd", "paper", eps=0.0, alpha=0.0, emulate_normalized_inputs=True, mean=FASHION_MEAN, std=FASHION_STD
    )(model, x, y)
    assert torch.allclose(explicit, res.adv, atol=1e-6)


def test_emulated_flaw_needs_mean_and_std(setup) -> None:
    model, x, y = setup
    with pytest.raises(RobustarchError, match="mean= and std="):
        ra.create("fgsm", emulate_normalized_inputs=True)(model.net, x, y)


# ---- presets --------------------------------------------------------------------------------------------
def test_paper_preset_has_the_papers_numbers() -> None:
    p = ra.preset("paper")
    assert list(p) == ["fgsm", "rfgsm", "stepll", "pgd"]
    assert all(a.profile == "paper" for a in p.values())
    assert p["fgsm"].params["eps"] == 0.007
    assert (p["rfgsm"].params["eps"], p["rfgsm"].params["alpha"], p["rfgsm"].params["steps"]) == (
        0.06,
        0.03,
        1,
    )
    assert (p["stepll"].params["eps"], p["stepll"].params["alpha"], p["stepll"].params["steps"]) == (
        0.01,
        0.003,
        0,
    )
    assert (p["pgd"].params["eps"], p["pgd"].params["alpha"], p["pgd"].params["steps"]) == (0.3, 0.007, 10)
    d = ra.preset("paper-defaults")
    assert d["rfgsm"].params["eps"] == 16 / 255 and d["pgd"].params["alpha"] == 2 / 255
    flawed = ra.preset("paper", emulate_normalized_inputs=True)
    assert all(a.emulate_normalized_inputs for a in flawed.values())


@pytest.mark.parametrize(
    ("dataset", "eps"), [("cifar10", 8 / 255), ("cifar100", 8 / 255), ("imagenet", 4 / 255)]
)
def test_standard_preset_budget_depends_on_dataset(dataset: str, eps: float) -> None:
    p = ra.preset("standard", dataset)
    assert {"fgsm", "rfgsm", "stepll", "pgd", "apgd-ce", "apgd-t", "square"} <= set(p)
    for key in ("fgsm", "pgd", "apgd-ce", "apgd-t", "square"):
        assert p[key].profile == "standard" and p[key].params["eps"] == pytest.approx(eps)
    sweep = sorted(a.params["eps"] for k, a in p.items() if k.startswith("pgd-eps"))
    assert len(sweep) >= 4 and eps in [pytest.approx(e) for e in sweep]


def test_standard_preset_needs_a_known_dataset() -> None:
    with pytest.raises(RobustarchError, match="needs a dataset"):
        ra.preset("standard")
    with pytest.raises(UnknownNameError, match="cifar10"):
        ra.preset("standard", "cifar-10")


# ---- robustarch.runtime -------------------------------------------------------------------------
def test_tune_allocator_is_idempotent() -> None:
    from robustarch.runtime import tune_allocator

    first = tune_allocator()
    assert isinstance(first, bool) and tune_allocator() == first


@pytest.mark.parametrize("which", ["tiny", "resnet18"])
def test_prepare_for_attack_keeps_logits_and_leaves_model_alone(setup, which: str) -> None:
    from robustarch import zoo
    from robustarch.runtime import prepare_for_attack

    if which == "tiny":
        model, x, _ = setup
    else:
        torch.manual_seed(0)
        model = zoo.load("resnet18", "cifar10")
        for m in model.modules():  # non-trivial BatchNorm statistics, so folding has something to fold
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
        x = torch.rand(4, 3, 32, 32, generator=gen(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared, info = prepare_for_attack(model, x)
    assert info.folded_batchnorm > 0 and info.channels_last
    assert info.max_abs_logit_diff <= 1e-5
    # the CIFAR ResNet-18's layer4 runs its three 512->512 3x3 convolutions on 2x2 maps (the strided one
    # and the 1x1 shortcut read 4x4 maps, where the dense map would cost more)
    assert info.dense_convolutions == (3 if which == "resnet18" else 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    with torch.no_grad():
        assert float((prepared(x) - model(x)).abs().max()) <= 1e-5
    # the input gradient an attack follows is the original model's, to float tolerance
    grads = []
    for net in (model, prepared):
        xg = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(net(xg), torch.arange(len(x)) % 10).backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert prepared is not model and not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# convolutions over tiny feature maps, computed as dense linear maps by prepare_for_attack
DENSE_CASES = {
    "3x3 pad 1 on 2x2": (dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), (16, 2, 2)),
    "no bias": (dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, bias=False), (8, 2, 2)),
    "stride 2 on 3x3": (dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1), (8, 3, 3)),
    "dilation 2": (dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2), (8, 2, 2)),
    "groups 4": (dict(in_channels=8, out_channels=8, kernel_size=5, padding=2, groups=4), (8, 2, 2)),
    "reflect padding": (dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
                        (6, 2, 2)),
    "circular 1x3": (dict(in_channels=4, out_channels=5, kernel_size=(1, 3), padding=(0, 1),
                          padding_mode="circular"), (4, 1, 1)),
}  # fmt: skip


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "torch-linear"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_dense_convolution_equals_the_convolution(case: str, layout: str, onednn: bool) -> None:
    from robustarch.runtime import DenseConv2d

    kwargs, chw = DENSE_CASES[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).eval().requires_grad_(False)
    dense = DenseConv2d(conv, chw)
    dense.onednn = onednn and dense.onednn
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(5, *chw, generator=gen(1)).contiguous(memory_format=fmt)
    outs, grads = [], []
    for net in (conv, dense):
        xg = x.clone().requires_grad_(True)
        y = net(xg)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y)
        grads.append(xg.grad)
    assert outs[1].shape == outs[0].shape
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)
    other = torch.randn(2, chw[0], chw[1] + 2, chw[2] + 2, generator=gen(2))  # another size: the convolution
    assert torch.equal(dense(other), conv(other))


def test_dense_convolution_is_chosen_only_where_it_saves_half_the_work() -> None:
    from robustarch.runtime import dense_convolution_pays

    conv3 = nn.Conv2d(512, 512, 3, padding=1)
    assert dense_convolution_pays(conv3, (512, 2, 2))  # 4 of 9 taps: 4/9 of the multiply-adds
    assert not dense_convolution_pays(conv3, (512, 4, 4))  # 16 > 9: the dense map costs more
    assert not dense_convolution_pays(nn.Conv2d(512, 512, 1), (512, 2, 2))  # 1x1: never cheaper
    assert dense_convolution_pays(nn.Conv2d(64, 64, 3, padding=1), (64, 1, 1))
    assert not dense_convolution_pays(conv3, (512, 2, 2), max_entries=2048 * 2048 - 1)  # matrix too large
    assert not dense_convolution_pays(nn.Conv2d(8, 8, 3, padding="same"), (8, 2, 2))


def test_dense_convolution_shared_module_and_other_input_sizes() -> None:
    """A convolution module used twice becomes one dense module; one that sees two input sizes stays."""
    from robustarch.runtime import DenseConv2d, densify_small_convolutions

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Conv2d(8, 8, 3, padding=1)
            self.twice = nn.Sequential(self.shared, nn.ReLU(), self.shared)
            self.sizes = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.twice(x)
            return self.sizes(y).mean((2, 3)) + self.sizes(nn.functional.pad(y, (1, 1, 1, 1))).mean((2, 3))

    torch.manual_seed(0)
    net = Net().eval().requires_grad_(False)
    x = torch.randn(3, 8, 2, 2, generator=gen(0))
    reference = net(x)
    dense, count = densify_small_convolutions(net, x)
    assert count == 1 and isinstance(dense.shared, DenseConv2d) and dense.twice[0] is dense.twice[2]
    assert type(dense.sizes) is nn.Conv2d
    torch.testing.assert_close(dense(x), reference, rtol=1e-5, atol=1e-5)


# ---- CLI --------------------------------------------------------------------------------------------------
def test_cli_list_and_bench(capsys) -> None:
    from robustarch.cli import main

    assert main(["attacks", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ra.list_attacks())
    assert (
        main(
            [
                "attacks",
                "bench",
                "--attack",
                "pgd",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--floor",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "img/s" in out and "floor" in out
    assert main(["attacks", "bench", "--attack", "pgdd"]) == 2
    assert "did you mean 'pgd'" in capsys.readouterr().err.lower()
