"""Reliability checks (``../shared/docs/attacks.md``, "Checks that make an evaluation trustworthy"), stored as
flags beside the runs they concern (``Store.add_flag``). Carlini et al. 2019, "On Evaluating Adversarial
Robustness", and Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of Security", motivate them.

Two kinds:

- *model checks* need the model and run on the job's first chunk after its runs are complete
  (:func:`model_checks`): ``deterministic_forward`` (check 8: eval mode, same logits twice, logits not
  probabilities), ``eps0_identity`` (check 2: the attack with every budget set to 0 returns x exactly and the
  clean predictions), ``noise_baseline`` (check 7: uniform-sign noise of the attack's L-inf budget must be
  weaker than the attack), ``amp_recheck`` (mixed precision vs a float32 recomputation of chunk 0);
- *store checks* read only stored results (:func:`store_checks`): ``budget`` (check 3: realized L-inf vs the
  nominal eps, overshoot and unused budget), ``iterative_vs_one_step`` (check 5), ``monotone_eps`` (check 4).

A check writes one flag per (run, check name); re-running it replaces the flag, so checks are idempotent.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from robustarch.attacks import AttackTraits, from_record, own_params
from robustarch.errors import RobustarchError
from robustarch.store import RunResult, Store

log = logging.getLogger(__name__)

BUDGET_KEYS = ("eps", "alpha")
TOL = 1e-6


def _flagged(store: Store, run_id: str, check: str) -> bool:
    return any(f.check == check for f in store.flags(run_id))


# -- model checks -----------------------------------------------------------------------------------------
def model_checks(engine: Any, job: Any, *, force: bool = False) -> None:
    """Run the model checks of a job whose runs are complete (checks already flagged are skipped unless
    ``force``)."""
    from robustarch.evaluation.engine import chunk_seed, topk_hits

    store: Store = engine.store
    start, stop = job.runs[0].key.chunk_bounds(0)
    x, y = job.data.batch(start, stop)
    x, y = x.to(engine.device), y.to(engine.device)
    model = job.model
    clean_run = job.runs[0]
    with torch.no_grad():
        logits = model(x).float()
        again = model(x).float()
    _, c1, _ = topk_hits(logits, y)
    if force or not _flagged(store, clean_run.run_id, "deterministic_forward"):
        training = [n for n, m in model.named_modules() if m.training]
        diff = float((logits - again).abs().max()) if logits.numel() else 0.0
        sums = logits.sum(1)
        probs_like = bool(((logits >= 0) & (logits <= 1)).all()) and bool(((sums - 1).abs() < 1e-3).all())
        status, detail = "ok", f"two forwards of {len(y)} examples agree exactly; eval mode; raw logits"
        if training:
            status, detail = "fail", f"{len(training)} module(s) in training mode, e.g. {training[0]!r}"
        elif diff > 0:
            status, detail = (
                "warn",
                (
                    f"two forwards of the same batch differ by up to {diff:.3g}: the model is randomized "
                    "(or nondeterministic), so a gradient attack sees one draw of it; attack it with "
                    "Expectation over Transformation (eot_samples=N on the gradient attacks, preset "
                    "autoattack-rand) and expect its numbers to vary between runs"
                ),
            )
        elif probs_like:
            status, detail = "warn", "outputs look like probabilities (in [0,1], summing to 1), not logits"
        store.add_flag(clean_run.run_id, "deterministic_forward", status, diff, detail)

    # chunk 0's stored outcomes in chunk order (the store orders by example id; a subset read from an id
    # file keeps the file's order)
    ids0 = job.data.example_ids[start:stop]
    stored = {}
    for r in job.runs:
        if not r.is_clean:
            by_id = {o.example_id: o for o in store.examples(r.run_id)}
            stored[r.run_id] = [by_id[i] for i in ids0]
    for r in job.runs:
        if r.is_clean:
            continue
        attack = r.plan.attack
        params = r.plan.params
        if "eps" in params and (force or not _flagged(store, r.run_id, "eps0_identity")):
            zero: dict[str, Any] = {k: 0.0 for k in BUDGET_KEYS if k in params}
            if "steps" in params:
                # one step shows a budget leak (a clamp in the wrong space moves x at the first step) at a
                # fraction of the cost; steps=0 would mean StepLL's automatic count, 0 at eps 0: no step
                zero["steps"] = 1
            try:
                a0 = type(attack)(profile=attack.profile, **{**own_params(attack), **zero})
            except RobustarchError as err:
                store.add_flag(
                    r.run_id, "eps0_identity", "warn", None, f"cannot build the eps=0 attack: {err}"
                )
            else:
                adv0 = a0(model, x, y, generator=torch.Generator().manual_seed(chunk_seed(r.run_id, 0)))
                moved = float((adv0 - x).abs().max()) if x.numel() else 0.0
                with torch.no_grad():
                    _, h1, _ = topk_hits(model(adv0), y)
                changed = int((h1 != c1).sum())
                ok = moved == 0.0 and changed == 0
                store.add_flag(
                    r.run_id,
                    "eps0_identity",
                    "ok" if ok else "fail",
                    moved,
                    f"with {', '.join(f'{k}={v:g}' for k, v in zero.items())} on {len(y)} examples: "
                    f"max |x_adv - x| = "
                    f"{moved:.3g} ({moved * 255:.3g}/255), {changed} top-1 outcome(s) changed"
                    + (
                        ""
                        if ok
                        else "; the attack moves inputs with no budget (clamping in the wrong space, "
                        "e.g. the emulated normalized-input flaw, or nondeterminism)"
                    ),
                )
        eps = params.get("eps")
        if (
            eps
            and not params.get("emulate_normalized_inputs")
            and (force or not _flagged(store, r.run_id, "noise_baseline"))
        ):
            gen = torch.Generator().manual_seed(chunk_seed(r.run_id, 0) ^ 0x5EED)
            signs = torch.rand(x.shape, generator=gen).to(x.device).lt(0.5).float() * 2 - 1
            noisy = (x + eps * signs).clamp(0, 1)
            with torch.no_grad():
                _, n1, _ = topk_hits(model(noisy), y)
            if r.key.adv_metric == "robust":
                n1 = n1 & c1
            noise_acc = float(n1.float().mean())
            attack_acc = sum(o.adv_correct1 for o in stored[r.run_id]) / max(1, len(stored[r.run_id]))
            status = "ok" if attack_acc <= noise_acc + TOL else "warn"
            store.add_flag(
                r.run_id,
                "noise_baseline",
                status,
                noise_acc - attack_acc,
                f"on {len(y)} examples: random-sign noise of L-inf {eps:.4g} leaves {noise_acc:.2%} top-1 "
                f"correct, "
                f"the attack {attack_acc:.2%}"
                + (
                    ""
                    if status == "ok"
                    else "; the attack is weaker than noise: suspect gradient masking or a bug"
                ),
            )
        if engine.dtype != "float32" and (force or not _flagged(store, r.run_id, "amp_recheck")):
            # the same chunk, seed and code path as the stored run, in float32
            ref = copy.copy(engine)
            ref.dtype = "float32"
            outs = ref._attack_chunk(
                model, r, 0, x, y, job.data.example_ids[start:stop], *topk_hits(logits, y)
            )
            agree = sum(a.adv_correct1 == b.adv_correct1 for a, b in zip(outs, stored[r.run_id], strict=True))
            frac = 1 - agree / max(1, len(outs))
            store.add_flag(
                r.run_id,
                "amp_recheck",
                "ok" if frac <= 0.01 else "warn",
                frac,
                f"{engine.dtype} vs float32 on chunk 0 ({len(outs)} examples): {len(outs) - agree} top-1 "
                "adversarial outcome(s) differ",
            )


# -- store checks ------------------------------------------------------------------------------------------
def _context(r: RunResult) -> tuple:
    """Runs comparable with each other: same data, model, weights, profile, seed, dtype and metric."""
    return (
        r.dataset,
        r.subset,
        r.model,
        r.weights_hash,
        r.profile,
        r.seed,
        r.dtype,
        r.adv_metric,
        bool(r.attack_params.get("emulate_normalized_inputs")),
    )


def store_checks(store: Store, run_ids: Iterable[str] | None = None) -> int:
    """Run the store checks over complete runs (all, or the groups containing ``run_ids``); returns the number
    of flags written."""
    results = [r for r in store.results(complete=True) if r.attack != "clean"]
    if run_ids is not None:
        wanted = set(run_ids)
        contexts = {_context(r) for r in results if r.run_id in wanted}
        results = [r for r in results if _context(r) in contexts]
    written = 0
    for r in results:
        written += _budget(store, r)
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[_context(r)].append(r)
    for group in groups.values():
        written += _iterative_vs_one_step(store, group)
        written += _monotone_eps(store, group)
    return written


def _budget(store: Store, r: RunResult) -> int:
    p = r.attack_params
    eps = p.get("eps")
    if eps is None:
        return 0
    if p.get("emulate_normalized_inputs"):
        store.add_flag(
            r.run_id,
            "budget",
            "warn",
            r.linf_max,
            f"eps {eps:.4g} is in normalized units (emulated flaw); realized L-inf max in pixels "
            f"{r.linf_max:.4g} ({r.linf_max * 255:.3g}/255)",
        )
        return 1
    notes, status = [], "ok"
    if r.n_attacked and r.linf_max > eps + TOL:
        status = "warn"
        notes.append(f"realized L-inf max {r.linf_max:.4g} exceeds eps {eps:.4g} (the ball is not enforced)")
    steps, alpha = p.get("steps"), p.get("alpha")
    if r.attack == "stepll" and not steps and alpha:
        steps = int(min(eps * 255 + 4, 1.25 * eps * 255))
    if alpha and steps and r.attack != "rfgsm" and alpha * steps < eps - TOL:
        status = "warn"
        notes.append(
            f"alpha*steps = {alpha * steps:.4g} < eps {eps:.4g}: the eps-ball never binds, the "
            f"effective budget is {alpha * steps:.4g}"
        )
    elif r.n_attacked and eps > 0 and r.linf_max < 0.5 * eps:
        status = "warn"
        notes.append(f"realized L-inf max {r.linf_max:.4g} uses under half of eps {eps:.4g}")
    detail = (
        f"nominal eps {eps:.4g} ({eps * 255:.3g}/255), realized L-inf max {r.linf_max:.4g} "
        f"({r.linf_max * 255:.3g}/255), mean {r.linf_mean:.4g}"
    ) + ("; " + "; ".join(notes) if notes else "")
    store.add_flag(r.run_id, "budget", status, r.linf_max / eps if eps else None, detail)
    return 1


def run_traits(r: RunResult) -> AttackTraits:
    """What the attack of a stored run is like, as its class declares it."""
    return from_record(r.attack, r.profile, r.attack_params).traits


def _iterative_vs_one_step(store: Store, group: Sequence[RunResult]) -> int:
    """Check 5: an untargeted iterative white-box attack with at least the budget of a one-step attack is at
    least as strong (adversarial top-1 not higher). A targeted attack (StepLL: the least-likely class)
    optimises something else, so only untargeted ones are compared."""
    written = 0
    traits = {r.run_id: run_traits(r) for r in group if "eps" in r.attack_params}
    one_step = [r for r in group if r.run_id in traits and traits[r.run_id].one_step]
    iterative = [
        r
        for r in group
        if r.run_id in traits
        and traits[r.run_id].iterative
        and not traits[r.run_id].targeted
        and traits[r.run_id].box == "white"
    ]
    for it in iterative:
        rivals = [o for o in one_step if o.attack_params["eps"] <= it.attack_params["eps"] + TOL]
        if not rivals:
            continue
        worst = min(rivals, key=lambda o: o.adv_top1)
        ok = it.adv_top1 <= worst.adv_top1 + TOL
        store.add_flag(
            it.run_id,
            "iterative_vs_one_step",
            "ok" if ok else "warn",
            it.adv_top1 - worst.adv_top1,
            f"{it.attack} (eps {it.attack_params['eps']:.4g}) {it.adv_top1:.2%} vs {worst.attack} "
            f"(eps {worst.attack_params['eps']:.4g}, run {worst.run_id}) {worst.adv_top1:.2%}"
            + ("" if ok else ": the iterative attack is weaker: suspect gradient masking or too few steps"),
        )
        written += 1
    return written


def _monotone_eps(store: Store, group: Sequence[RunResult]) -> int:
    """Check 4: along a sweep (same attack and parameters but eps), accuracy does not rise with eps; at a very
    large eps (>= 0.5) it should be near 0."""
    sweeps: dict[tuple, list[RunResult]] = defaultdict(list)
    for r in group:
        if "eps" in r.attack_params:
            rest = {k: v for k, v in r.attack_params.items() if k not in ("eps", "alpha")}
            sweeps[(r.attack, repr(sorted(rest.items())))].append(r)
    written = 0
    for runs in sweeps.values():
        if len(runs) < 2:
            continue
        runs = sorted(runs, key=lambda r: r.attack_params["eps"])
        for prev, cur in itertools.pairwise(runs):
            rise = cur.adv_top1 - prev.adv_top1
            ok = rise <= TOL
            store.add_flag(
                cur.run_id,
                "monotone_eps",
                "ok" if ok else "warn",
                rise,
                f"eps {prev.attack_params['eps']:.4g} -> {cur.attack_params['eps']:.4g}: top-1 "
                f"{prev.adv_top1:.2%} -> {cur.adv_top1:.2%}" + ("" if ok else " (accuracy rose with eps)"),
            )
            written += 1
        top = runs[-1]
        if top.attack_params["eps"] >= 0.5:
            near_zero = top.adv_top1 <= 0.05
            store.add_flag(
                top.run_id,
                "large_eps",
                "ok" if near_zero else "warn",
                top.adv_top1,
                f"at eps {top.attack_params['eps']:.4g} top-1 is {top.adv_top1:.2%}"
                + ("" if near_zero else " (should approach 0)"),
            )
            written += 1
    return written


__all__ = ["model_checks", "store_checks"]
