"""Expectation over Transformation (``eot_samples``, Athalye et al. 2018) on the gradient attacks: the input
gradient is the mean over that many forwards, for models that draw new randomness at every forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustarch.attacks as ra
from robustarch.attacks._loss import loss_and_grad
from test_attacks import FAST, PassCounter, gen, trained_model_and_data

# every gradient attack offering EoT (a new one declaring ``eot_samples`` is picked up)
EOT = [
    name for name in ra.list_attacks() if "eot_samples" in ra.attack_class(name).defaults.get("standard", {})
]
AVAILABLE = {"autoattack": {"version": "rand"}}


class Cycling(nn.Module):
    """A randomized model with known randomness: forward k scales its input by the k-th of ``scales``."""

    def __init__(self, net: nn.Module, scales: list[float]):
        super().__init__()
        self.net, self.scales, self.calls = net, scales, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scales[self.calls % len(self.scales)]
        self.calls += 1
        return self.net(x * scale)


class Noisy(nn.Module):
    """Gaussian noise on the input at every forward (a randomized defense; torch's global generator)."""

    def __init__(self, net: nn.Module, sigma: float):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


@pytest.fixture(scope="module")
def data():
    model, x, y, trained = trained_model_and_data()
    return model, x, y, trained


def test_eot_gradient_is_the_mean_over_the_forwards(data) -> None:
    model, x, y, _ = data
    x, y = x[:8], y[:8]
    scales = [0.5, 0.8, 1.0, 1.3]
    cycling = Cycling(model, scales).eval()
    _, _, grad = loss_and_grad(cycling, x, y, samples=len(scales), reduction="sum")
    singles = []
    for s in scales:
        xs = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(xs * s), y, reduction="sum").backward()
        singles.append(xs.grad)
    torch.testing.assert_close(grad, torch.stack(singles).mean(0), rtol=1e-5, atol=1e-7)
    _, _, one = loss_and_grad(model, x, y, samples=1)
    _, _, plain = loss_and_grad(model, x, y)
    assert torch.equal(one, plain)  # one sample is the plain gradient, bit for bit


@pytest.mark.parametrize("name", EOT)
def test_eot_multiplies_the_gradient_passes(data, name: str) -> None:
    model, x, y, _ = data
    x, y = x[:16], y[:16]
    counts = {}
    for samples in (1, 3):
        params = {**FAST.get(name, {}), **AVAILABLE.get(name, {}), "eot_samples": samples}
        if "early_stop" in ra.attack_class(name).defaults["standard"]:
            params["early_stop"] = False  # so that both runs attack the same examples for as long
        attack = ra.create(name, **params)
        counter = PassCounter(model).eval()
        attack(counter, x, y, generator=gen(0))
        counts[samples] = counter.grad_examples
        assert counter.grad_examples <= attack.traits.gradient_passes * len(x)
        assert f"EoT {samples}" in attack.describe() or samples == 1
    assert counts[3] == 3 * counts[1] > 0


@pytest.mark.parametrize("name", ["pgd", "apgd-ce"])
def test_eot_is_stronger_on_a_randomized_model(data, name: str) -> None:
    """On a model with Gaussian input noise (sigma 0.1), averaging 10 gradients finds adversarial examples
    that its majority vote over 20 noisy forwards gets wrong more often than a single gradient does."""
    model, x, y, trained = data
    if not trained:
        pytest.skip("needs the Fashion-MNIST files for a trained model")
    x, y = x[:128], y[:128]
    noisy = Noisy(model, 0.1).eval()

    def vote_accuracy(adv: torch.Tensor) -> int:
        torch.manual_seed(123)
        with torch.no_grad():
            votes = torch.stack([noisy(adv).softmax(1) for _ in range(20)]).mean(0)
        return int((votes.argmax(1) == y).sum())

    correct = {}
    for samples in (1, 10):
        torch.manual_seed(0)  # the model's noise
        attack = ra.create(name, eps=8 / 255, steps=10, eot_samples=samples, early_stop=False)
        correct[samples] = vote_accuracy(attack(noisy, x, y, generator=gen(0)))
    assert correct[10] <= correct[1] - 3
