"""Store checks: reliability checks that read only stored results (``docs/study.md``, "Reliability
checks"): ``budget`` (check 3 of ``../shared/docs/attacks.md``: realized L-inf vs the nominal eps, overshoot
and unused budget), ``iterative_vs_one_step`` (check 5), ``monotone_eps`` / ``large_eps`` along a sweep
(check 4), ``black_box_beats_white_box`` (check 7: Square stronger than every white-box attack beyond the
intervals suggests gradient masking, Athalye et al. 2018) and ``finite_logits`` (examples whose logits were
not finite, counted wrong).
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from robustarch.attacks import AttackTraits, from_record
from robustarch.store import RunResult, Store, paired_interval

log = logging.getLogger(__name__)

TOL = 1e-6
NO_PREDICTION = -1  # robustarch.evaluation.engine.NO_PREDICTION: logits that were not finite


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
    runs = store.results(complete=True)
    if run_ids is not None:
        wanted = set(run_ids)
        contexts = {_context(r) for r in runs if r.run_id in wanted}
        runs = [r for r in runs if _context(r) in contexts]
    written = sum(_finite_logits(store, r) for r in runs)
    results = [r for r in runs if r.attack != "clean"]
    for r in results:
        written += _budget(store, r)
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[_context(r)].append(r)
    for group in groups.values():
        written += _iterative_vs_one_step(store, group)
        written += _monotone_eps(store, group)
        written += _black_box_vs_white_box(store, group)
    return written


def _budget(store: Store, r: RunResult) -> int:
    """Check 3: the realized norm against the nominal eps, in the run's own norm (L-inf or L2): overshoot,
    steps that cannot reach the ball (the attack's declared ``reach``), under half of the budget used."""
    p = r.attack_params
    eps = p.get("eps")
    if eps is None:
        return 0
    attack = from_record(r.attack, r.profile, p)
    if attack.traits.norm == "L2":
        return _budget_l2(store, r, eps)
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
    reach = attack.reach()
    if reach is not None and reach < eps - TOL:
        status = "warn"
        notes.append(
            f"its steps reach {reach:.4g} < eps {eps:.4g} (alpha x steps): the eps-ball never binds, the "
            f"effective budget is {reach:.4g}"
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


def _budget_l2(store: Store, r: RunResult, eps: float) -> int:
    status, notes = "ok", []
    if r.n_attacked and r.l2_max > eps * (1 + 1e-5) + TOL:
        status = "warn"
        notes.append(f"realized L2 max {r.l2_max:.4g} exceeds eps {eps:.4g} (the ball is not enforced)")
    elif r.n_attacked and eps > 0 and r.l2_max < 0.5 * eps:
        status = "warn"
        notes.append(f"realized L2 max {r.l2_max:.4g} uses under half of eps {eps:.4g}")
    detail = f"nominal L2 eps {eps:.4g}, realized L2 max {r.l2_max:.4g}, mean {r.l2_mean:.4g}"
    store.add_flag(
        r.run_id, "budget", status, r.l2_max / eps if eps else None, detail + "".join(f"; {n}" for n in notes)
    )
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


def _finite_logits(store: Store, r: RunResult) -> int:
    """Examples whose clean or adversarial logits held a NaN or an infinity: stored as no prediction and
    counted wrong; any is a failed check (a model that overflows, or divides by zero, on some inputs)."""
    rows = store.examples(r.run_id)
    clean = sum(o.clean_pred == NO_PREDICTION for o in rows)
    adv = sum(o.adv_pred == NO_PREDICTION for o in rows)
    if not clean and not adv:
        store.add_flag(r.run_id, "finite_logits", "ok", 0.0, f"all logits finite on {len(rows)} examples")
        return 1
    store.add_flag(
        r.run_id,
        "finite_logits",
        "fail",
        (clean + adv) / max(1, len(rows)),
        f"non-finite logits (NaN or inf) for {clean} clean and {adv} adversarial of {len(rows)} examples: "
        "counted wrong; the model's output is not usable there",
    )
    return 1


def _black_box_vs_white_box(store: Store, group: Sequence[RunResult]) -> int:
    """Check 7: a score-based black-box attack (Square) that leaves fewer examples correct than the strongest
    white-box attack of at most its budget, beyond both 95% intervals, points to masked gradients (the
    white-box attacks do not see the loss the model has)."""
    traits = {r.run_id: run_traits(r) for r in group if "eps" in r.attack_params}
    written = 0
    for bb in (r for r in group if r.run_id in traits and traits[r.run_id].box == "black"):
        rivals = [
            r
            for r in group
            if r.run_id in traits
            and traits[r.run_id].box == "white"
            and traits[r.run_id].norm == traits[bb.run_id].norm
            and r.attack_params["eps"] <= bb.attack_params["eps"] + TOL
        ]
        if not rivals:
            continue
        best = min(rivals, key=lambda r: r.adv_top1)
        lo, hi = _paired_difference(store, bb, best)
        beaten = hi < 0  # the black-box attack leaves fewer examples correct, beyond the paired interval
        store.add_flag(
            bb.run_id,
            "black_box_beats_white_box",
            "warn" if beaten else "ok",
            bb.adv_top1 - best.adv_top1,
            f"{bb.attack} {bb.adv_top1:.2%} vs the strongest white-box attack {best.attack} (eps "
            f"{best.attack_params['eps']:.4g}) {best.adv_top1:.2%} on the same examples: difference "
            f"{bb.adv_top1 - best.adv_top1:+.1%}, paired 95% CI {lo:+.1%} to {hi:+.1%}"
            + (
                ": the black-box attack is stronger beyond the intervals, so the gradients the white-box "
                "attacks follow are masked (Athalye et al. 2018); trust Square's number, not theirs"
                if beaten
                else ""
            ),
        )
        written += 1
    return written


def _paired_difference(store: Store, a: RunResult, b: RunResult) -> tuple[float, float]:
    """Paired 95% interval of accuracy(a) - accuracy(b) over the examples both runs hold."""
    first = {o.example_id: o.adv_correct1 for o in store.examples(a.run_id)}
    pairs = [(first[o.example_id], o.adv_correct1) for o in store.examples(b.run_id) if o.example_id in first]
    cells = [
        sum(1 for p in pairs if p == k) for k in ((True, True), (True, False), (False, True), (False, False))
    ]
    return paired_interval(*cells)
