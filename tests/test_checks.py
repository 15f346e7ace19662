"""Reliability flags on pathological models (issue: gradient masking caught directly): logits x 1e4, an
input-quantization layer with zero gradient, probabilities as output, NaN logits for some examples, and a
randomized model each raise their named flag; a sound model raises none of them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustarch
from models_for_tests import NoisyLogits
from test_attacks import trained_model_and_data

N = 64


class Scaled(nn.Module):
    """Logits x 1e4: the softmax saturates, so cross-entropy gradients underflow to exactly zero."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 1e4


class Quantized(nn.Module):
    """Rounds the input to 8 bits first: a layer whose gradient is zero almost everywhere."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 255) / 255)


class Probabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


class NaNRows(nn.Module):
    """NaN logits for the brighter half of the images."""

    def __init__(self, net: nn.Module, threshold: float):
        super().__init__()
        self.net, self.threshold = net, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        bright = x.flatten(1).mean(1) > self.threshold
        return torch.where(bright[:, None], torch.full_like(logits, float("nan")), logits)


@pytest.fixture(scope="module")
def setup():
    model, x, y, _ = trained_model_and_data()
    return model, x[:N], y[:N]


def flags(results) -> dict[tuple[str, str], dict]:
    return {(f["attack"], f["check"]): f for f in results.flags()}


def test_a_sound_model_raises_no_masking_flag(setup):
    model, x, y = setup
    got = flags(robustarch.evaluate(model, (x, y), attacks=["fgsm", "pgd"], batch_size=N))
    for key in (("clean", "zero_gradient"), ("clean", "deterministic_forward"), ("clean", "raw_logits")):
        assert got[key]["status"] == "ok", got[key]
    assert got[("clean", "large_eps")]["status"] == "ok" and got[("pgd", "noise_baseline")]["status"] == "ok"
    assert got[("pgd", "finite_logits")]["status"] == "ok"


def test_saturated_logits_raise_zero_gradient(setup):
    model, x, y = setup
    got = flags(robustarch.evaluate(Scaled(model), (x, y), attacks=["pgd"], batch_size=N))
    assert got[("clean", "zero_gradient")]["status"] == "warn"
    assert got[("clean", "zero_gradient")]["value"] > 0.5


def test_quantized_input_raises_zero_gradient_and_black_box_beats_white_box(setup):
    model, x, y = setup
    res = robustarch.evaluate(
        Quantized(model), (x, y), attacks=["pgd", "stepll", ("square", {"queries": 300})], batch_size=N
    )
    got = flags(res)
    assert (
        got[("clean", "zero_gradient")]["status"] == "warn" and got[("clean", "zero_gradient")]["value"] == 1
    )
    assert got[("square", "black_box_beats_white_box")]["status"] == "warn"
    assert "masked" in got[("square", "black_box_beats_white_box")]["detail"]
    assert got[("pgd", "noise_baseline")]["status"] == "warn"  # PGD is no stronger than noise here
    assert "suspect gradient masking" in got[("pgd", "noise_baseline")]["detail"]
    stepll = got[("stepll", "noise_baseline")]  # targeted at one class: a tie says less
    assert stepll["status"] == "warn" and "targeted" in stepll["detail"]
    assert got[("clean", "large_eps")]["status"] == "warn"  # even eps 0.5 does not move a zero gradient


def test_probabilities_as_output_raise_raw_logits(setup):
    model, x, y = setup
    got = flags(robustarch.evaluate(Probabilities(model), (x, y), attacks=["fgsm"], batch_size=N))
    assert (
        got[("clean", "raw_logits")]["status"] == "warn"
        and "probabilities" in got[("clean", "raw_logits")]["detail"]
    )


def test_nan_logits_fail_and_count_wrong(setup):
    model, x, y = setup
    threshold = float(x.flatten(1).mean(1).median())
    res = robustarch.evaluate(NaNRows(model, threshold), (x, y), attacks=["fgsm"], batch_size=N)
    got = flags(res)
    assert got[("clean", "finite_logits")]["status"] == "fail"
    bright = x.flatten(1).mean(1) > threshold
    clean = res.outcomes("clean")
    assert not any(c for c, b in zip(clean, bright.tolist(), strict=True) if b)  # NaN rows are never right
    with torch.no_grad():
        right = (model(x).argmax(1) == y) & ~bright
    assert sum(clean) == int(right.sum())
    assert got[("clean", "deterministic_forward")]["status"] == "ok"  # NaN == NaN in the same places


def test_a_randomized_model_is_flagged_with_the_eot_advice(setup):
    model, x, y = setup
    got = flags(robustarch.evaluate(NoisyLogits(model), (x, y), attacks=["fgsm"], batch_size=N))
    assert got[("clean", "deterministic_forward")]["status"] == "warn"
    assert "eot_samples" in got[("clean", "deterministic_forward")]["detail"]


def test_bf16_runs_are_rechecked_in_float32(setup):
    """dtype bf16 (autocast, also on CPU) is its own run, and each attack run carries the float32 re-check:
    the same attack and seed on `recheck` examples in both precisions, agreement and accuracy difference."""
    model, x, y = setup
    res = robustarch.evaluate(model, (x, y), attacks=["fgsm", "pgd"], batch_size=N, dtype="bf16", recheck=32)
    assert {r.dtype for r in res.runs()} == {"amp-bfloat16"}
    fp32 = robustarch.evaluate(model, (x, y), attacks=["fgsm"], batch_size=N)
    assert res.runs()[0].run_id != fp32.runs()[0].run_id  # the dtype is part of a run's identity
    got = flags(res)
    for attack in ("fgsm", "pgd"):
        recheck = got[(attack, "amp_recheck")]
        assert recheck["status"] in ("ok", "warn") and 0 <= recheck["value"] <= 1
        assert (
            "amp-bfloat16 vs float32 on 32 examples" in recheck["detail"] and "accuracy" in recheck["detail"]
        )
    assert ("fgsm", "amp_recheck") not in flags(fp32)
