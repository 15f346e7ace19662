"""The ``paper`` profile against the original torchattacks 1.3 code (the version the study's environment.yml
pins), run the way the study's released pipeline ran it: on *normalized* tensors fed to a network that does
not normalize (values below 0 and above 1), and, for the plain profile, on [0,1] images fed to a model that
normalizes inside.

torchattacks 1.3 cannot be installed beside the 3.5.1 oracle (same package name), so ``scripts/setup.sh
--test`` downloads its wheel (``pip download --no-deps torchattacks==1.3``) into the git-ignored ``.oracles/``
and this file imports it from there in a subprocess (this same file, run as a script). Without the wheel the
tests skip with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WHEEL = Path(os.environ.get("ROBUSTARCH_ORACLE13", REPO / ".oracles" / "torchattacks-1.3-py3-none-any.whl"))
WHEEL_REASON = (
    f"torchattacks 1.3 (oracle) is not at {WHEEL}: run `bash scripts/setup.sh --test`, or `pip download "
    "--no-deps torchattacks==1.3 -d .oracles`"
)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# (case id, attack, robustarch paper-profile parameters); the 1.3 arguments are the same numbers (1.3 calls
# the step count ``iters``). The first five are preset("explain")'s "clamp alone" and preset("paper").
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("clamp", "fgsm", {"eps": 0.0}),
    ("fgsm", "fgsm", {"eps": 0.007}),
    ("rfgsm", "rfgsm", {"eps": 0.06, "alpha": 0.03, "steps": 1}),
    ("stepll", "stepll", {"eps": 0.01, "alpha": 0.003, "steps": 0}),
    ("pgd", "pgd", {"eps": 0.3, "alpha": 0.007, "steps": 10, "random_start": False}),
    ("rfgsm-2", "rfgsm", {"eps": 16 / 255, "alpha": 8 / 255, "steps": 2}),
    ("stepll-defaults", "stepll", {"eps": 4 / 255, "alpha": 1 / 255, "steps": 0}),
    ("stepll-8", "stepll", {"eps": 0.02, "alpha": 0.004, "steps": 8}),
    ("pgd-8/255", "pgd", {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": False}),
    # the released CIFAR code's reading (random start; 1.3's uniform_ draws what robustarch's rand draws)
    ("pgd-random-start", "pgd", {"eps": 0.3, "alpha": 0.007, "steps": 10, "random_start": True}),
]
# R-FGSM's noise and PGD's random start: torch.manual_seed(SEED) for 1.3, a Generator seeded SEED for ours
SEED = 5


# ---- the subprocess side: torchattacks 1.3 ----------------------------------------------------------------
def _oracle_main(inp: str, out: str) -> None:
    """Run every case with torchattacks 1.3 imported from the wheel; write adversarial tensors to ``out``."""
    sys.path.insert(0, str(WHEEL))
    import torchattacks  # 1.3, from the wheel (a zip on sys.path)

    if not str(Path(torchattacks.__file__).resolve()).startswith(str(WHEEL.resolve())):
        raise SystemExit(f"imported torchattacks from {torchattacks.__file__}, not from {WHEEL}")
    data = torch.load(inp, weights_only=True)
    torch.set_num_threads(1)
    results: dict[str, torch.Tensor] = {}
    for model_key in data["models"]:
        spec = data["models"][model_key]
        net = _tiny_cnn(spec["channels"])
        net.load_state_dict(spec["state"])
        net.eval()
        mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
        # the released pipeline: the loader normalized, the network did not; plain: the model normalizes
        pipelines = {"released": (net, spec["z"]), "plain": (_Normalizing(net, mean, std), spec["x"])}
        for pipeline, (model, images) in pipelines.items():
            for case, attack, params in CASES:
                kw = {k: v for k, v in params.items() if k != "steps"}
                if "steps" in params:
                    kw["iters"] = params["steps"]
                cls = {"fgsm": "FGSM", "rfgsm": "RFGSM", "stepll": "StepLL", "pgd": "PGD"}[attack]
                torch.manual_seed(SEED)
                adv = getattr(torchattacks, cls)(model, **kw)(images.clone(), spec["y"].clone())
                results[f"{model_key}/{pipeline}/{case}"] = adv.detach()
    torch.save(results, out)


class _Normalizing(torch.nn.Module):
    """A model taking [0,1] input, written here independently of robustarch.zoo."""

    def __init__(self, net: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _tiny_cnn(channels: int) -> torch.nn.Module:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_attacks import tiny_cnn

    return tiny_cnn(channels)


# ---- the test side ----------------------------------------------------------------------------------------
def _models() -> dict[str, dict[str, Any]]:
    """A 1-channel CNN trained briefly on real Fashion-MNIST (normalized values in about [-0.81, 2.02]) and an
    untrained 3-channel CNN with CIFAR-10 statistics on random images (per-channel normalization)."""
    from robustarch.zoo import Normalized
    from test_attacks import FASHION_MEAN, FASHION_STD, tiny_cnn, trained_model_and_data

    model, x, y, _ = trained_model_and_data()
    out = {"fashion": {"model": model, "x": x[:96], "y": y[:96], "mean": FASHION_MEAN, "std": FASHION_STD}}
    torch.manual_seed(1)
    colour = Normalized(tiny_cnn(3), CIFAR_MEAN, CIFAR_STD).eval()
    g = torch.Generator().manual_seed(2)
    out["colour"] = {
        "model": colour,
        "x": torch.rand(32, 3, 28, 28, generator=g),
        "y": torch.randint(10, (32,), generator=g),
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
    }
    for spec in out.values():
        mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
        spec["z"] = (spec["x"] - mean) / std  # what the released loaders gave the attack
    return out


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    if not WHEEL.is_file():
        pytest.skip(WHEEL_REASON)
    models = _models()
    folder = tmp_path_factory.mktemp("oracle13")
    inp, out = folder / "in.pt", folder / "out.pt"
    payload = {
        key: {
            "channels": spec["x"].shape[1],
            "state": spec["model"].net.state_dict(),
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "x": spec["x"],
            "z": spec["z"],
            "y": spec["y"],
        }
        for key, spec in models.items()
    }
    torch.save({"models": payload}, inp)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, __file__, str(inp), str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return models, torch.load(out, weights_only=True)


def _ours(spec: dict[str, Any], attack: str, params: dict[str, Any], emulate: bool) -> torch.Tensor:
    import robustarch.attacks as ra

    created = ra.create(attack, "paper", emulate_normalized_inputs=emulate, **params)
    return created(spec["model"], spec["x"], spec["y"], generator=torch.Generator().manual_seed(SEED))


def _normalized(spec: dict[str, Any], pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _predictions(spec: dict[str, Any], z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return spec["model"].net(z).argmax(1)


@pytest.mark.parametrize("model_key", ["fashion", "colour"])
def test_normalized_inputs_reach_below_0_and_above_1(oracle, model_key: str) -> None:
    """The premise: the released pipeline's tensors leave [0,1] on both sides, far beyond StepLL's eps."""
    models, _ = oracle
    z = models[model_key]["z"]
    assert float(z.min()) < -0.5 and float(z.max()) > 1.0
    assert float((z < -0.01).float().mean()) > 0.1


@pytest.mark.parametrize("model_key", ["fashion", "colour"])
@pytest.mark.parametrize(("case", "attack", "params"), CASES, ids=[c[0] for c in CASES])
def test_emulated_flaw_equals_torchattacks_13_on_normalized_tensors(oracle, model_key, case, attack, params):
    """``emulate_normalized_inputs=True`` gives the adversarial tensors 1.3 gave the released pipeline, and
    the same prediction on every example."""
    models, results = oracle
    spec = models[model_key]
    theirs = results[f"{model_key}/released/{case}"]
    ours = _normalized(spec, _ours(spec, attack, params, emulate=True))
    assert float((ours - theirs).abs().max()) <= 2e-6  # the round trip through pixel space
    assert torch.equal(_predictions(spec, ours), _predictions(spec, theirs))


@pytest.mark.parametrize("model_key", ["fashion", "colour"])
@pytest.mark.parametrize(("case", "attack", "params"), CASES, ids=[c[0] for c in CASES])
def test_paper_profile_equals_torchattacks_13_on_pixels(oracle, model_key, case, attack, params) -> None:
    """Without the flaw (a model that normalizes inside, [0,1] images) the paper profile is 1.3 as well."""
    models, results = oracle
    spec = models[model_key]
    theirs = results[f"{model_key}/plain/{case}"]
    ours = _ours(spec, attack, params, emulate=False)
    assert float((ours - theirs).abs().max()) <= 1e-6


@pytest.mark.parametrize(("case", "attack", "params"), CASES[:5], ids=[c[0] for c in CASES[:5]])
def test_emulated_flaw_on_the_engines_prepared_model(oracle, case, attack, params) -> None:
    """The engine attacks robustarch.runtime.prepare_for_attack's copy (BatchNorm folded, channels_last):
    the emulated attacks find the normalization there too and give 1.3's tensors, up to the few pixels
    whose gradient sign flips with the folded model's ~1e-6 logit differences (multi-step attacks)."""
    from robustarch.runtime import prepare_for_attack

    models, results = oracle
    spec = dict(models["fashion"])
    spec["model"], _ = prepare_for_attack(spec["model"], spec["x"])
    ours = _normalized(spec, _ours(spec, attack, params, emulate=True))
    theirs = results[f"fashion/released/{case}"]
    differ = float(((ours - theirs).abs() > 2e-5).float().mean())
    flipped = float(
        (_predictions(models["fashion"], ours) != _predictions(models["fashion"], theirs)).float().mean()
    )
    # measured: one-step attacks 0 and 0; PGD-10 0.03% of the values and 1 of 96 predictions
    assert differ <= 0.002 and flipped <= 0.03


def test_plain_clamp_reading_of_stepll_differs_from_13(oracle) -> None:
    """What the oracle catches: StepLL read as ``clamp(0, 1)`` after each step (the emulation before the
    corrected docs/attacks.md) differs from 1.3 on normalized tensors for most images, and leaves far less of
    the image below 0."""
    models, results = oracle
    spec = models["fashion"]
    theirs = results["fashion/released/stepll"]
    net, z = spec["model"].net, spec["z"]
    with torch.no_grad():
        target = net(z).argmin(1)
    cur = z.clone()
    for _ in range(3):  # int(min(255*0.01 + 4, 1.25*255*0.01)) steps
        cur.requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(cur), target), cur)
        cur = (cur.detach() - 0.003 * g.sign()).clamp(0.0, 1.0)
    differs = ((cur - theirs).abs().flatten(1).amax(1) > 1e-4).float().mean()
    assert float(differs) > 0.9
    assert float((theirs < 0).float().mean()) > 0.3 and float((cur < 0).float().mean()) == 0.0


def test_explain_preset_runs_what_the_oracle_checks() -> None:
    """preset("explain") = the clamp alone and the paper's four attacks, each as released and on [0,1], with
    the parameters checked against 1.3 above, then the standard preset's FGSM, R-FGSM, StepLL, PGD and
    APGD-CE."""
    import robustarch.attacks as ra
    from robustarch.errors import RobustarchError

    explain = ra.preset("explain", "cifar10")
    checked = {case: (attack, params) for case, attack, params in CASES}
    paper = ["fgsm", "rfgsm", "stepll", "pgd"]
    expected = ["clamp", *(f"{k}-released" for k in paper), *(f"{k}-paper" for k in paper)]
    expected += [f"{k}-standard" for k in ("fgsm", "rfgsm", "stepll", "pgd", "apgd-ce")]
    assert list(explain) == expected
    for key in ["clamp", *(f"{k}-{how}" for k in paper for how in ("released", "paper"))]:
        attack = explain[key]
        name, params = checked[key.split("-")[0]]
        assert (attack.name, attack.profile) == (name, "paper")
        assert attack.emulate_normalized_inputs == (not key.endswith("-paper"))
        assert {k: attack.params[k] for k in params} == params
    standard = ra.preset("standard", "imagenet")
    for key in ("fgsm", "pgd", "apgd-ce"):
        assert ra.preset("explain", "imagenet")[f"{key}-standard"].params == standard[key].params
    with pytest.raises(RobustarchError, match="needs a dataset"):
        ra.preset("explain")
    with pytest.raises(RobustarchError, match="sets emulate_normalized_inputs itself"):
        ra.preset("explain", "cifar10", emulate_normalized_inputs=True)


if __name__ == "__main__":
    _oracle_main(sys.argv[1], sys.argv[2])
