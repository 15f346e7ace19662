"""Model checks: reliability checks that need the model, run on the first chunk of a job once its runs are
complete (``docs/study.md``, "Reliability checks"; ``../shared/docs/attacks.md``, checks 2, 7 and 8). Carlini
et al. 2019, "On Evaluating Adversarial Robustness", and Athalye et al. 2018, "Obfuscated Gradients Give a
False Sense of Security", motivate them; AutoAttack's own checks (Croce & Hein 2020) flag zero gradients.

Once per model (on the clean run): ``deterministic_forward`` (same logits twice; a randomized model is
flagged with the advice to use EoT, never refused), ``raw_logits`` (outputs that look like probabilities),
``zero_gradient`` (the share of examples whose input gradient is exactly zero: saturated softmax, a
non-differentiable layer), ``large_eps`` (a PGD probe at eps 0.5 that should break nearly every example; only
where the job has standard-profile white-box attacks). Per attack run: ``eps0_identity`` (with every budget 0
the attack returns x and the clean predictions), ``noise_baseline`` (random-sign noise of the attack's budget
must break fewer examples than the attack: a tie is a warning), ``amp_recheck`` (mixed precision against
float32 on ``recheck`` examples).

The checks' passes run on the model the attacks ran on (the prepared copy, ``Engine.attack_model``), so
noise and the attacks meet the same function; the training-mode scan reads the model as given.

Cost. The checks share passes: every check uses a few examples of chunk 0 (``CHECK_EXAMPLES``, the noise
baseline ``NOISE_EXAMPLES``, the eps-0 identity ``EPS0_EXAMPLES``), the noise baseline is computed once per
distinct budget with several budgets in one forward pass, and an eps-0 attack that returns x exactly needs
no forward to know its predictions are the clean ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustarch.attacks import create, own_params
from robustarch.errors import RobustarchError
from robustarch.store import Store

log = logging.getLogger(__name__)

CHECK_EXAMPLES = 32
NOISE_EXAMPLES = 64
# the eps-0 identity is a property of every single example (a budget leak moves all images with a pixel at
# 0 or 1, i.e. nearly all): a few examples show it as well as many, at a quarter of the cost
EPS0_EXAMPLES = 8
BUDGET_KEYS = ("eps", "alpha")
LARGE_EPS = 0.5
LARGE_EPS_STEPS = 5
NEAR_ZERO = 0.05  # robust accuracy at eps 0.5 above this is a warning
# a tie with noise is evidence only when noise leaves this many examples to break: with one or two correct
# examples (a model near chance) attack and noise tie by chance
MIN_TIE_EVIDENCE = 5


@dataclass
class _Probe:
    """What the model checks of one job share: the model, chunk 0's first examples and their clean logits.
    ``model`` is the one the attacks ran on (``Engine.attack_model``: the prepared copy, within a tolerance
    of the model as given, and about twice as fast on CPU); ``job.model`` is the model as given."""

    engine: Any
    job: Any
    model: Any
    force: bool
    x: Tensor
    y: Tensor
    logits: Tensor
    correct: Tensor
    noise_cache: dict[float, Tensor] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.engine.store

    def wanted(self, run_id: str, check: str) -> bool:
        return self.force or not any(f.check == check for f in self.store.flags(run_id))

    def predict(self, x: Tensor) -> Tensor:
        from robustarch.evaluation.engine import topk_hits

        with torch.no_grad():
            return topk_hits(self.model(x), self.y[: len(x)])[1]


def model_checks(engine: Any, job: Any, *, force: bool = False) -> None:
    """Run the model checks of a job whose runs are complete (checks already flagged are skipped unless
    ``force``)."""
    from robustarch.evaluation.engine import topk_hits

    start, stop = job.runs[0].key.chunk_bounds(0)
    x, y = job.data.batch(start, min(stop, start + max(CHECK_EXAMPLES, NOISE_EXAMPLES)))
    x, y = x.to(engine.device), y.to(engine.device)
    model = engine.attack_model(job)
    with torch.no_grad():
        logits = model(x).float()
    probe = _Probe(engine, job, model, force, x, y, logits, topk_hits(logits, y)[1])
    clean = job.runs[0].run_id
    for check in (_deterministic_forward, _raw_logits, _zero_gradient, _large_eps):
        if probe.wanted(clean, check.__name__.lstrip("_")):
            check(probe, clean)
    _noise_predictions(probe, [r for r in job.runs[1:] if probe.wanted(r.run_id, "noise_baseline")])
    for r in job.runs[1:]:
        for check in (_eps0_identity, _noise_baseline, _amp_recheck):
            if probe.wanted(r.run_id, check.__name__.lstrip("_")):
                check(probe, r)


# -- once per model ------------------------------------------------------------------------------------------
def _deterministic_forward(p: _Probe, run_id: str) -> None:
    x = p.x[:CHECK_EXAMPLES]
    first = p.logits[: len(x)]
    with torch.no_grad():
        again = p.model(x).float()
    same = (first == again) | (first.isnan() & again.isnan())
    finite = torch.isfinite(first) & torch.isfinite(again)
    diff = float((first - again).abs()[finite].max()) if bool(finite.any()) else 0.0
    training = [n or type(p.job.model).__name__ for n, m in p.job.model.named_modules() if m.training]
    status, detail = "ok", f"two forwards of {len(x)} examples agree exactly; eval mode"
    if training:
        status, detail = "fail", f"{len(training)} module(s) in training mode, e.g. {training[0]!r}"
    elif not bool(same.all()):
        status, detail = (
            "warn",
            (
                f"two forwards of the same batch differ by up to {diff:.3g}: the model is randomized "
                "(or nondeterministic), so a gradient attack sees one draw of it; attack it with "
                "Expectation over Transformation (eot_samples=N on the gradient attacks, preset "
                "autoattack-rand) and expect its numbers to vary between runs"
            ),
        )
    p.store.add_flag(run_id, "deterministic_forward", status, diff, detail)


def _raw_logits(p: _Probe, run_id: str) -> None:
    logits = p.logits[torch.isfinite(p.logits).all(1)]
    sums = logits.sum(1)
    probs_like = (
        bool(len(logits))
        and bool(((logits >= 0) & (logits <= 1)).all())
        and bool(((sums - 1).abs() < 1e-3).all())
    )
    p.store.add_flag(
        run_id,
        "raw_logits",
        "warn" if probs_like else "ok",
        None,
        "outputs look like probabilities (in [0, 1], summing to 1), not logits: a softmax inside the model "
        "flattens the loss the attacks climb (return the logits)"
        if probs_like
        else f"outputs of {len(logits)} examples are not probabilities",
    )


def _zero_gradient(p: _Probe, run_id: str) -> None:
    """The share of examples whose cross-entropy gradient w.r.t. the input is exactly zero (AutoAttack's
    zero-gradient check): such an example gives a gradient attack nothing to follow."""
    x = p.x[:CHECK_EXAMPLES].detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(p.model(x).float(), p.y[: len(x)], reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    zero = (
        torch.ones(len(x), dtype=torch.bool, device=x.device)
        if grad is None
        else (grad.flatten(1) == 0).all(1)
    )
    share = float(zero.float().mean())
    p.store.add_flag(
        run_id,
        "zero_gradient",
        "warn" if share > 0 else "ok",
        share,
        f"{int(zero.sum())} of {len(x)} examples have an input gradient of exactly zero"
        + (
            ": gradient attacks cannot move them (saturated logits, a non-differentiable layer such as "
            "quantization): their robustness under white-box attacks is not evidence; check Square"
            if share > 0
            else ""
        ),
    )


def _large_eps(p: _Probe, run_id: str) -> None:
    """A PGD probe at eps 0.5 (half the pixel range): nearly every example should break; one that survives
    points to masked gradients. Only for jobs with standard-profile white-box attacks."""
    if not any(r.plan.profile == "standard" and r.plan.attack.traits.box == "white" for r in p.job.runs[1:]):
        return
    from robustarch.evaluation.engine import chunk_seed

    attack = create("pgd", eps=LARGE_EPS, alpha=LARGE_EPS / 4, steps=LARGE_EPS_STEPS)
    x, y = p.x[:CHECK_EXAMPLES], p.y[:CHECK_EXAMPLES]
    adv = attack(p.model, x, y, generator=torch.Generator().manual_seed(chunk_seed(run_id, 0) ^ 0x1A9E))
    robust = p.predict(adv) & p.correct[: len(x)]
    acc = float(robust.float().mean())
    p.store.add_flag(
        run_id,
        "large_eps",
        "ok" if acc <= NEAR_ZERO else "warn",
        acc,
        f"PGD-{LARGE_EPS_STEPS} at eps {LARGE_EPS} on {len(x)} examples leaves {acc:.1%} correct"
        + ("" if acc <= NEAR_ZERO else ": it should approach 0; suspect masked gradients"),
    )


# -- per attack run ------------------------------------------------------------------------------------------
def _eps0_identity(p: _Probe, r: Any) -> None:
    from robustarch.evaluation.engine import chunk_seed

    attack, params = r.plan.attack, r.plan.params
    if "eps" not in params:
        return
    zero: dict[str, Any] = {k: 0.0 for k in BUDGET_KEYS if k in params}
    if "steps" in params:
        # one step shows a budget leak (a clamp in the wrong space moves x at the first step) at a fraction
        # of the cost; steps=0 would mean StepLL's automatic count, 0 at eps 0: no step
        zero["steps"] = 1
    try:
        a0 = create(attack.name, attack.profile, **{**own_params(attack), **zero})
    except RobustarchError as err:
        p.store.add_flag(r.run_id, "eps0_identity", "warn", None, f"cannot build the eps=0 attack: {err}")
        return
    x, y = p.x[:EPS0_EXAMPLES], p.y[:EPS0_EXAMPLES]
    adv0 = a0(p.model, x, y, generator=torch.Generator().manual_seed(chunk_seed(r.run_id, 0)))
    moved = float((adv0 - x).abs().max()) if x.numel() else 0.0
    # x returned exactly has the clean predictions: no forward needed to know it
    changed = 0 if moved == 0.0 else int((p.predict(adv0) != p.correct[: len(x)]).sum())
    ok = moved == 0.0 and changed == 0
    p.store.add_flag(
        r.run_id,
        "eps0_identity",
        "ok" if ok else "fail",
        moved,
        f"with {', '.join(f'{k}={v:g}' for k, v in zero.items())} on {len(x)} examples: max |x_adv - x| = "
        f"{moved:.3g} ({moved * 255:.3g}/255), {changed} top-1 outcome(s) changed"
        + (
            ""
            if ok
            else "; the attack moves inputs with no budget (clamping in the wrong space, e.g. the emulated "
            "normalized-input flaw, or nondeterminism)"
        ),
    )


def _noise_budget(r: Any) -> float | None:
    """The L-inf budget the noise baseline compares the run's attack with (None: no comparison)."""
    params = r.plan.params
    eps = params.get("eps")
    if not eps or params.get("emulate_normalized_inputs") or r.plan.attack.traits.norm != "Linf":
        return None
    return float(eps)


def _noise_predictions(p: _Probe, runs: list[Any]) -> None:
    """Top-1 hits under random-sign noise at each distinct budget of ``runs``, several budgets per forward
    pass (at most the engine's batch size of examples): the same signs (one draw from the clean run's
    chunk-0 seed) scaled by each budget."""
    from robustarch.evaluation.engine import chunk_seed, topk_hits

    budgets = sorted({e for e in map(_noise_budget, runs) if e is not None and e not in p.noise_cache})
    if not budgets:
        return
    x, y = p.x[:NOISE_EXAMPLES], p.y[:NOISE_EXAMPLES]
    gen = torch.Generator().manual_seed(chunk_seed(p.job.runs[0].run_id, 0) ^ 0x5EED)
    signs = torch.rand(x.shape, generator=gen).to(x.device).lt(0.5).float() * 2 - 1
    per_pass = max(1, p.engine.batch_size // max(1, len(x)))
    for i in range(0, len(budgets), per_pass):
        group = budgets[i : i + per_pass]
        noisy = torch.cat([(x + eps * signs).clamp(0, 1) for eps in group])
        with torch.no_grad():
            hits = topk_hits(p.model(noisy), y.repeat(len(group)))[1]
        p.noise_cache.update(zip(group, hits.split(len(x)), strict=True))


def _noise_baseline(p: _Probe, r: Any) -> None:
    """Random-sign noise of the attack's L-inf budget must leave more examples correct than the attack: an
    attack no stronger than noise (a tie included) suggests masked gradients or a bug. The noise is drawn
    once per budget and shared by the attacks that have it. A tie warns only when noise leaves at least
    ``MIN_TIE_EVIDENCE`` examples correct; the attack leaving more correct than noise always warns."""
    eps = _noise_budget(r)
    if eps is None:
        return
    x = p.x[:NOISE_EXAMPLES]
    _noise_predictions(p, [r])
    noise = p.noise_cache[eps]
    if r.key.adv_metric == "robust":
        noise = noise & p.correct[: len(x)]
    ids = p.job.data.example_ids[: len(x)]
    stored = {o.example_id: o for o in p.store.examples(r.run_id)}
    attack_correct = sum(stored[i].adv_correct1 for i in ids)
    noise_correct = int(noise.sum())
    tie_is_evidence = noise_correct >= MIN_TIE_EVIDENCE
    ok = attack_correct < noise_correct or (attack_correct == noise_correct and not tie_is_evidence)
    p.store.add_flag(
        r.run_id,
        "noise_baseline",
        "ok" if ok else "warn",
        (noise_correct - attack_correct) / max(1, len(x)),
        f"on {len(x)} examples: random-sign noise of L-inf {eps:.4g} leaves {noise_correct} top-1 "
        f"correct, the attack {attack_correct}" + ("" if ok else _weaker_than_noise(r.plan.attack)),
    )


def _weaker_than_noise(attack: Any) -> str:
    """What a run no stronger than noise suggests: masking or a bug, unless the attack aims at one chosen
    class (StepLL's least-likely class), which can miss untargeted misclassifications that noise finds."""
    if attack.traits.targeted:
        return (
            "; the attack is no stronger than noise, but it is targeted (it aims at one class, which "
            "noise does not): compare the untargeted attacks' noise_baseline flags before suspecting "
            "gradient masking"
        )
    return "; the attack is no stronger than noise: suspect gradient masking or a bug"


def _amp_recheck(p: _Probe, r: Any) -> None:
    """Mixed precision against float32 on ``engine.recheck`` examples of chunk 0: the same attack with the
    same seed, once under autocast and once in float32; the share of top-1 outcomes that differ and the
    accuracy difference are stored (``warn`` above 1%)."""
    engine = p.engine
    if engine.dtype == "float32":
        return
    from robustarch.evaluation.engine import autocast, chunk_seed

    n = min(engine.recheck, len(p.x))
    x, y = p.x[:n], p.y[:n]
    outcomes = []
    for dtype in (engine.dtype, "float32"):
        gen = torch.Generator().manual_seed(chunk_seed(r.run_id, 0))
        with autocast(engine.device, dtype):
            adv = r.plan.attack(p.model, x, y, generator=gen).float()
        outcomes.append(p.predict(adv) & p.correct[:n])
    differ = int((outcomes[0] != outcomes[1]).sum())
    acc_diff = float(outcomes[0].float().mean() - outcomes[1].float().mean())
    p.store.add_flag(
        r.run_id,
        "amp_recheck",
        "ok" if differ <= 0.01 * n else "warn",
        differ / max(1, n),
        f"{engine.dtype} vs float32 on {n} examples (same attack and seed): {differ} top-1 outcome(s) "
        f"differ, accuracy {acc_diff:+.2%}",
    )
