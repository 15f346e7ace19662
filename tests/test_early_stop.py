"""Early stopping (issue 14): in the standard profile an iterative attack stops attacking an example at the
first iterate that misclassifies it, returns that iterate, and runs the rest of the batch without it. Under
the robust metric that is never weaker than running every example to the end, and it costs fewer passes.
The paper profile has no such switch (it stays bit for bit torchattacks 1.3: tests/test_attacks_reference.py).
"""

from __future__ import annotations

import pytest
import torch

import robustarch.attacks as ra
from robustarch.errors import UnknownNameError
from test_attacks import FAST, PassCounter, gen, trained_model_and_data

# every registered configuration that offers the switch (a new attack declaring ``early_stop`` is picked up)
STOPPING = [
    name for name in ra.list_attacks() if "early_stop" in ra.attack_class(name).defaults.get("standard", {})
]
AVAILABLE = {"autoattack": {"version": "rand", "eot_samples": 1}}  # the default version needs FAB


@pytest.fixture(scope="module")
def data():
    model, x, y, trained = trained_model_and_data()
    return model, x[:256], y[:256], trained


def run(name: str, model, x, y, seed: int = 0, **params) -> tuple[torch.Tensor, int]:
    """(misclassified flags of the adversarial batch, gradient passes the attack made)."""
    counter = PassCounter(model).eval()
    attack = ra.create(name, **{**FAST.get(name, {}), **AVAILABLE.get(name, {}), **params})
    adv = attack(counter, x, y, generator=gen(seed))
    with torch.no_grad():
        return model(adv).argmax(1) != y, counter.grad_examples


def test_every_iterative_standard_attack_offers_it() -> None:
    assert {"pgd", "stepll", "rfgsm", "apgd-ce", "apgd-dlr", "apgd-t", "autoattack"} <= set(STOPPING)
    for name in STOPPING:
        assert ra.attack_class(name).defaults["standard"]["early_stop"] is True  # on by default
        if "paper" in ra.attack_profiles(name):
            with pytest.raises(UnknownNameError, match="early_stop"):
                ra.create(name, "paper", early_stop=False)


@pytest.mark.parametrize("name", STOPPING)
def test_never_weaker_and_never_more_passes(data, name: str) -> None:
    model, x, y, _ = data
    x, y = x[:64], y[:64]
    params = {"steps": 5} if name in ("rfgsm",) else {}
    broken_off, passes_off = run(name, model, x, y, early_stop=False, **params)
    broken_on, passes_on = run(name, model, x, y, early_stop=True, **params)
    assert bool((broken_on | ~broken_off).all())  # every example broken without it is broken with it
    assert passes_on <= passes_off


def test_pgd_with_large_steps_is_stronger_with_early_stopping(data) -> None:
    """Where it matters: PGD with step = eps oscillates, and some examples it breaks on the way are correct
    again at the final iterate; early stopping keeps them broken."""
    model, x, y, trained = data
    if not trained:
        pytest.skip("needs the Fashion-MNIST files for a trained model")
    eps, steps = 8 / 255, 10
    kw = {"eps": eps, "alpha": eps, "steps": steps, "random_start": False}
    broken_off, passes_off = run("pgd", model, x, y, early_stop=False, **kw)
    broken_on, passes_on = run("pgd", model, x, y, early_stop=True, **kw)
    assert bool((broken_on | ~broken_off).all())
    assert int(broken_on.sum()) >= int(broken_off.sum()) + 2  # strictly stronger on this model and seed
    assert passes_off == steps * len(y)  # without it every example takes every step
    # with it each broken example stops at its breaking iterate: well under the full count here
    assert passes_on < 0.8 * passes_off


def test_describe_names_the_old_behaviour() -> None:
    assert "no early stop" in ra.create("pgd", early_stop=False).describe()
    assert "early stop" not in ra.create("pgd").describe()
    assert "early stop" not in ra.create("rfgsm", early_stop=False).describe()  # one step: nothing to stop
