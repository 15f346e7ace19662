"""Adversarial training: the inner maximisation against the attack library and the papers' formulas,
adversarial training beating standard training under PGD on a tiny problem (in one test), the
catastrophic-overfitting detector on a constructed gradient-masking network, stopping / flagging, and exact
resume of an adversarial run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from robustarch import attacks
from robustarch.data import ImageDataset
from robustarch.errors import RobustarchError
from robustarch.train import RECIPES, Trainer, get_recipe
from robustarch.train import trainer as trainer_module
from robustarch.train.adversarial import AdversarialTraining, adversarial_loss, perturb, start_noise
from robustarch.train.overfitting import RobustnessCheck, detect_overfitting, measure
from robustarch.zoo import Normalized

ADVERSARIAL = sorted(name for name, r in RECIPES.items() if r.adversarial is not None)


def robust_vs_weak_features(n: int, seed: int, grid: int = 1) -> ImageDataset:
    """Two classes of 1x8x8 uint8 images (Tsipras et al., ICLR 2019, "Robustness May Be at Odds with
    Accuracy", Sec. 2): pixel 0 agrees with the label 90% of the time by a wide margin (0.25, robust to
    eps = 8/255); the 63 others agree by 0.025 each under noise 0.03 (predictive together, but an eps of
    8/255 > 0.025 reverses every one of them). Pixel values are multiples of ``grid``/255."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float()[:, None]
    agree = torch.where(torch.rand(n, 1, generator=g) < 0.9, sign, -sign)
    robust = 0.5 + 0.25 * agree
    weak = 0.5 + 0.025 * sign + 0.03 * torch.randn(n, 63, generator=g)
    x = torch.cat([robust, weak], 1).clamp(0, 1).view(n, 1, 8, 8)
    levels = (x * 255 / grid).round() * grid
    return ImageDataset(y, torch.arange(n), (1, 8, 8), images=levels.clamp(0, 255).to(torch.uint8))


def linear_model() -> Normalized:
    return Normalized(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), [0.5], [0.25])


def bn_model() -> Normalized:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(256, 2))  # fmt: skip
    return Normalized(net, [0.5], [0.25])


def tiny(recipe: str, epochs: int = 8, **changes):
    """A published recipe shortened for the tiny problem: no augmentation (8x8 features are positional)."""
    r = get_recipe(recipe).with_overrides(epochs=epochs, batch_size=100, lr=0.2, weight_decay=0.0)
    return dataclasses.replace(
        r, augment=dataclasses.replace(r.augment, crop_padding=0, hflip=False), **changes
    )


def accuracies(model, ds: ImageDataset) -> tuple[float, float]:
    """Clean and PGD-10 (8/255) robust accuracy, measured with the attack library."""
    x, y = ds.uint8().float() / 255, ds.labels
    model.eval()
    adv = attacks.create("pgd", eps=8 / 255, alpha=2 / 255, steps=10)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        robust = clean & (model(adv).argmax(1) == y)
    return clean.float().mean().item(), robust.float().mean().item()


# -------------------------------------------------------------------------------- the inner maximisation


def test_training_pgd_equals_the_attack_library():
    """In eval mode a pgd spec is exactly robustarch.attacks' PGD, given the same random start (training uses
    the final iterate, as Madry et al.'s code does, so the library's early stop is off)."""
    torch.manual_seed(0)
    model = bn_model().eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    spec = AdversarialTraining("pgd", eps=8 / 255, alpha=2 / 255, steps=5, bn_mode="eval")
    noise = start_noise(spec, tuple(x.shape), torch.Generator().manual_seed(7))
    ours = perturb(model, x, y, spec, noise)
    library = attacks.create("pgd", eps=8 / 255, alpha=2 / 255, steps=5, early_stop=False)(
        model, x, y, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(ours, library)


def test_fgsm_rs_is_wongs_single_step():
    """Wong et al. 2020, Algorithm 3: delta ~ U(-eps, eps), delta <- clip(delta + alpha sign(grad), -eps,
    eps), x + delta kept in [0, 1] -- written out here independently of the library."""
    torch.manual_seed(0)
    model = bn_model().train()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(3))
    spec = get_recipe("fast-at").adversarial
    noise = start_noise(spec, tuple(x.shape), torch.Generator().manual_seed(4))
    ours = perturb(model, x, y, spec, noise)
    delta = ((x + noise).clamp(0, 1) - x).requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + spec.alpha * grad.sign()).clamp(-spec.eps, spec.eps)
    wong = (x + delta).clamp(0, 1)
    torch.testing.assert_close(ours, wong, rtol=0, atol=1e-7)
    assert model.training  # the mode is restored


def test_trades_perturbation_raises_the_kl_within_the_ball():
    torch.manual_seed(0)
    model = bn_model().train()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(6))
    spec = get_recipe("trades").adversarial
    noise = start_noise(spec, tuple(x.shape), torch.Generator().manual_seed(8))
    x_adv = perturb(model, x, y, spec, noise)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= spec.eps + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1

    def kl(z):
        with torch.no_grad():
            model.eval()
            p = torch.softmax(model(x), 1)
            out = nn.functional.kl_div(torch.log_softmax(model(z), 1), p, reduction="sum").item()
            model.train()
            return out

    assert kl(x_adv) > 10 * kl(x + noise)  # ten ascent steps, from almost x
    loss, logits = adversarial_loss(model, x, y, x_adv, spec, nn.CrossEntropyLoss())
    natural = nn.functional.cross_entropy(model(x), y)
    assert loss.item() > natural.item() and logits.shape == (16, 2)


def test_random_starts_are_the_same_for_one_or_two_processes():
    spec = get_recipe("pgd-at").adversarial
    whole = start_noise(spec, (6, 1, 4, 4), torch.Generator().manual_seed(3))
    for rank in range(2):
        part = start_noise(spec, (6, 1, 4, 4), torch.Generator().manual_seed(3), slice(rank, None, 2))
        assert torch.equal(part, whole[rank::2])


def test_bad_adversarial_settings_are_refused():
    with pytest.raises(RobustarchError, match="fgsm-rs"):
        AdversarialTraining("fgsm_rs")
    with pytest.raises(RobustarchError, match="steps"):
        AdversarialTraining("pgd", steps=0)
    with pytest.raises(RobustarchError, match="eps"):
        AdversarialTraining("pgd", eps=2.0)
    with pytest.raises(RobustarchError, match="stop"):
        RobustnessCheck(action="halt")


# ---------------------------------------------------------------------------- training beats standard


@pytest.mark.parametrize("recipe", ADVERSARIAL)
def test_adversarial_training_raises_pgd_accuracy_over_standard_training(recipe, tmp_path):
    """The same network, recipe, data and seed, once with and once without the adversarial step: the
    standard one leans on the weak features and loses most of them to PGD; the adversarial one does not."""
    train, test = robust_vs_weak_features(2000, 0), robust_vs_weak_features(500, 1)
    results = {}
    for kind, r in (("adversarial", tiny(recipe, check=None)), ("standard", tiny(recipe, adversarial=None,
                                                                                   check=None))):  # fmt: skip
        torch.manual_seed(0)
        model = linear_model()
        Trainer(model, train, r, out=tmp_path / kind, progress=False).fit()
        results[kind] = accuracies(model, test)
    (clean_std, robust_std), (clean_adv, robust_adv) = results["standard"], results["adversarial"]
    assert clean_std > 0.95 and clean_adv > 0.8, results
    assert robust_adv > 0.8 and robust_adv - robust_std > 0.25, results


# ------------------------------------------------------------------------ catastrophic overfitting


@pytest.mark.parametrize(
    ("pgd", "fgsm", "fires"),
    [
        ([0.45, 0.47, 0.02], [0.50, 0.55, 0.80], True),  # PGD collapses while FGSM rises: the signature
        ([0.45, 0.47, 0.30], [0.50, 0.55, 0.56], False),  # a fall of 0.17 is below the 0.2 threshold
        ([0.45, 0.47, 0.02], [0.50, 0.55, 0.10], False),  # both collapse: divergence, not overfitting
        ([0.45], [0.50], False),  # nothing to compare with
        ([0.10, 0.40, 0.45, 0.18], [0.2, 0.5, 0.6, 0.61], True),  # against the best epoch, not the last
    ],
)
def test_overfitting_rule(pgd, fgsm, fires):
    checks = [{"epoch": i + 1, "pgd": p, "fgsm": f} for i, (p, f) in enumerate(zip(pgd, fgsm, strict=True))]
    event = detect_overfitting(checks, drop=0.2)
    assert (event is not None) == fires
    if fires:
        assert event["epoch"] == len(pgd) and event["best_pgd"] == max(pgd[:-1])


class GradientMasked(nn.Module):
    """A constructed case of catastrophic overfitting's signature: a network whose loss is flat where FGSM
    looks and steep elsewhere in the eps-ball. Clean images lie on a grid of 8/255; around every grid point a
    dead zone hides a branch that, once a pixel leaves the zone, pushes the predicted class down. FGSM sees no
    gradient of it at the clean image and steps exactly 8/255, onto the grid again: FGSM accuracy is the
    honest network's. PGD's random start leaves the grid; its 2/255 steps then circle mid-cell, where the
    branch is active, and break (nearly) every example."""

    def __init__(self, honest: nn.Module, strength: float = 100.0, period: int = 8):
        super().__init__()
        self.honest, self.strength, self.period = honest, strength, period

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.honest(x)
        cells = x * 255 / self.period
        offset = cells - cells.round().detach()  # in [-0.5, 0.5] of a grid cell, 0 on the grid
        off_grid = torch.relu(offset.abs() - 0.25).flatten(1).sum(1, keepdim=True)
        predicted = nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()
        return logits - self.strength * off_grid * predicted


def test_detector_fires_on_a_gradient_masking_network(tmp_path):
    train, held_out = robust_vs_weak_features(2000, 0), robust_vs_weak_features(400, 2, grid=8)
    torch.manual_seed(0)
    honest = linear_model()
    Trainer(honest, train, tiny("pgd-at", check=None), out=tmp_path, progress=False).fit()
    check = RobustnessCheck(images=400)
    images, labels = held_out.uint8(), held_out.labels
    before = {"epoch": 1, **measure(honest, images, labels, check, torch.device("cpu"))}
    after = {"epoch": 2, **measure(GradientMasked(honest), images, labels, check, torch.device("cpu"))}
    assert after["clean"] == before["clean"] and after["fgsm"] >= before["fgsm"]
    assert before["pgd"] > 0.8 and after["pgd"] < 0.1, (before, after)
    event = detect_overfitting([before, after], check.drop)
    assert event is not None and event["best_epoch"] == 1
    assert detect_overfitting([before, {**before, "epoch": 2}], check.drop) is None


def _scripted_checks(monkeypatch, pgd_by_epoch: list[float]):
    """Replace the measurement with scripted numbers (the detector itself is tested on a real network above);
    FGSM accuracy rises every epoch."""
    calls = []

    def fake(model, images, labels, check, device):
        calls.append(len(calls))
        e = len(calls) - 1
        return {"n": float(len(labels)), "clean": 0.9, "fgsm": 0.5 + 0.05 * e, "pgd": pgd_by_epoch[e]}

    monkeypatch.setattr(trainer_module, "measure", fake)
    return calls


@pytest.mark.parametrize("action", ["stop", "flag"])
def test_the_trainer_stops_or_flags_and_keeps_the_best_weights(action, tmp_path, monkeypatch):
    train, held_out = robust_vs_weak_features(400, 0), robust_vs_weak_features(50, 3)
    recipe = tiny("fast-at", epochs=5, check=RobustnessCheck(images=50, action=action))
    calls = _scripted_checks(monkeypatch, [0.30, 0.45, 0.40, 0.05, 0.04])
    snapshots = []

    def fresh() -> Trainer:
        torch.manual_seed(0)
        return Trainer(linear_model(), train, recipe, out=tmp_path, progress=False, check_set=held_out)

    trainer = fresh()
    while trainer.epoch < recipe.epochs and not trainer.stopped:
        trainer.train_epoch()
        snapshots.append({k: v.clone() for k, v in trainer.net.state_dict().items()})
    checks = [h["check"] for h in trainer.history]
    assert trainer.overfit["epoch"] == 4 and trainer.overfit["best_epoch"] == 2
    assert checks[3].get("catastrophic_overfitting") and "catastrophic_overfitting" not in checks[2]
    if action == "stop":
        assert trainer.stopped and trainer.epoch == 4 and len(calls) == 4
        assert all(torch.equal(v, snapshots[1][k]) for k, v in trainer.net.state_dict().items())
        resumed = fresh()  # a stopped run stays stopped
        assert resumed.load_checkpoint() and resumed.stopped and resumed.fit() == trainer.history
        assert len(calls) == 4
    else:
        assert not trainer.stopped and trainer.epoch == 5 and len(calls) == 5


def test_adversarial_training_resumes_bit_exactly(tmp_path):
    """Random starts, train-mode BatchNorm under attack, the held-out check and the best-epoch weights all
    survive a restart."""
    train, held_out = robust_vs_weak_features(300, 0), robust_vs_weak_features(40, 4)
    recipe = tiny("fast-at", epochs=2, check=RobustnessCheck(images=40))

    def fresh(out) -> Trainer:
        torch.manual_seed(0)
        return Trainer(bn_model(), train, recipe, out=out, seed=3, progress=False, check_set=held_out)

    straight = fresh(tmp_path / "a")
    straight.fit()
    first = fresh(tmp_path / "b")
    first.train_epoch()
    torch.manual_seed(99)
    resumed = fresh(tmp_path / "b")
    assert resumed.load_checkpoint() and resumed.epoch == 1
    resumed.fit()
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert straight.history == [{**h, "seconds": s["seconds"]} for h, s in zip(resumed.history,
                                                                                 straight.history,
                                                                                 strict=True)]  # fmt: skip
    assert straight.best["epoch"] == resumed.best["epoch"]
