"""The device-parametrized tests: every attack, the engine, mixed precision and model preparation on each
available device (CUDA where present; on a machine without one the CUDA cases skip with that reason).
``scripts/gpu-check.sh`` runs this file on a GPU.

The random-number contract of ``robustarch.attacks`` (draws come from the caller's generator, on its device,
then move to the images' device) means a CPU generator gives the same draws on any device: so a CUDA run
agrees with the CPU run per example, up to floating-point differences of the kernels."""

from __future__ import annotations

import pytest
import torch

import robustarch
import robustarch.attacks as ra
from robustarch.runtime import prepare_for_attack
from test_attacks import CASES, FAST, trained_model_and_data

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    ),
]


@pytest.fixture(scope="module")
def setup():
    model, x, y, _ = trained_model_and_data()
    return model, x[:32], y[:32]


def on(device: str, model, x, y):
    return model.to(device), x.to(device), y.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "profile", "params"), CASES)
def test_attacks_keep_their_contract_on_the_device(
    setup, device: str, name: str, profile: str, params
) -> None:
    model, x, y = on(device, *setup)
    attack = ra.create(name, profile, **{**FAST.get(name, {}), **params})
    result = attack.run(model, x, y, generator=torch.Generator().manual_seed(3))
    assert result.adv.device.type == device and result.adv.dtype == torch.float32
    assert float(result.adv.min()) >= 0 and float(result.adv.max()) <= 1
    if (
        "eps" in attack.params
        and not attack.params.get("emulate_normalized_inputs")
        and profile == "standard"
    ):
        assert float(result.norm_max) <= attack.eps * (1 + 1e-5) + 1e-6
    again = attack.run(model, x, y, generator=torch.Generator().manual_seed(3)).adv
    if device == "cpu":
        assert torch.equal(result.adv, again)
    else:  # CUDA kernels may sum in another order from call to call: the same step signs almost everywhere
        assert float((result.adv != again).float().mean()) <= 0.01
    model.cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_agrees_with_the_cpu_per_example(setup, device: str) -> None:
    """The same seeded PGD on the device and on the CPU: the same examples broken, but for a few near the
    boundary where float kernels differ."""
    model, x, y = setup
    attack = ra.create("pgd", steps=5)
    cpu = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    dev_model, dx, dy = on(device, model, x, y)
    dev = attack(dev_model, dx, dy, generator=torch.Generator().manual_seed(0)).cpu()
    model.cpu()
    with torch.no_grad():
        same = (model(cpu).argmax(1) == model(dev).argmax(1)).float().mean()
    assert float(same) >= 0.9
    assert float((cpu - dev).abs().max()) <= 8 / 255 * 2 + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_the_engine_evaluates_on_the_device_with_a_bf16_recheck(setup, device: str) -> None:
    model, x, y = setup
    res = robustarch.evaluate(model, (x, y), attacks=["fgsm"], device=device, dtype="bf16", batch_size=16)
    run = res.runs()[1]
    assert run.device == device and run.dtype == "amp-bfloat16" and run.n == 32
    assert any(f["check"] == "amp_recheck" for f in res.flags())
    model.cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_preparation_keeps_the_logits_on_the_device(setup, device: str) -> None:
    model, x, _ = setup
    dev_model = model.to(device)
    prepared, info = prepare_for_attack(dev_model, x.to(device))
    with torch.no_grad():
        diff = (prepared(x.to(device)) - dev_model(x.to(device))).abs().max()
    assert float(diff) <= info.tolerance and info.checks
    model.cpu()
