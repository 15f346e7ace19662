"""The Python front end: evaluate any model in one call (``docs/api.md``).

>>> import robustarch
>>> results = robustarch.evaluate(my_net, (x_test, y_test), preset="standard", mean=MEAN, std=STD)
>>> results.table()
>>> clean, robust = robustarch.benchmark(my_net, "cifar10", "~/data/cifar10", n_examples=1000)

Both build an :class:`~robustarch.evaluation.spec.EvaluationSpec` and run it through the same engine as
``robustarch evaluate`` and study files, into a results store (in memory unless ``store=`` names a file, in
which case the runs resume like any study's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from robustarch.errors import RobustarchError
from robustarch.evaluation.runner import open_store, run_specs
from robustarch.evaluation.spec import (
    AttackOverrides,
    DataRef,
    EvaluationSpec,
    ModelRef,
    apply_overrides,
    resolve_attacks,
)
from robustarch.store import RunResult, Store


class Results:
    """The runs of one evaluation, read back from its store (every number comes from there)."""

    def __init__(self, store: Store, run_ids: Sequence[str]):
        self.store = store
        self.run_ids = list(dict.fromkeys(run_ids))

    def runs(self) -> list[RunResult]:
        return [self.store.result(r) for r in self.run_ids]

    def records(self) -> list[dict[str, Any]]:
        """One dict per run (clean first): ``attack`` (its label), ``params``, ``metric``, ``n``, clean and
        adversarial top-1 and top-5 accuracy (fractions), ``ci95`` (the adversarial top-1's 95% Wilson
        interval, a pair), ``run_id``, and the description, norm, budget, model, dataset and flags."""
        from robustarch.evaluation.tables import contributions, records

        runs = self.runs()
        out = []
        for r, rec in zip(runs, records(runs), strict=True):
            rec = dict(rec)
            rec["ci95"] = (rec.pop("ci95_lo"), rec.pop("ci95_hi"))
            rec.update(
                attack_id=r.attack,
                params=dict(r.attack_params),
                norm=(r.meta.get("traits") or {}).get("norm"),
                complete=r.complete,
                contributions=contributions(self.store, r),
            )
            out.append(rec)
        return out

    def _run(self, attack: str) -> RunResult:
        runs = self.runs()
        for r in runs:
            if r.meta.get("label", r.attack) == attack or r.run_id == attack:
                return r
        from robustarch.errors import UnknownNameError

        raise UnknownNameError(
            "attack in these results", attack, [r.meta.get("label", r.attack) for r in runs]
        )

    def outcomes(self, attack: str) -> list[bool]:
        """Per example (in example-id order), whether it is adversarially correct (top-1) under ``attack``
        (a label such as ``"pgd"``, or ``"clean"``)."""
        r = self._run(attack)
        return [o.adv_correct1 for o in self.store.examples(r.run_id)]

    def flags(self) -> list[dict[str, Any]]:
        """The reliability checks' verdicts: dicts with ``check``, ``status`` (ok, warn, fail), ``detail``,
        ``value``, and the run's ``attack`` and ``run_id``."""
        return [
            {
                "check": f.check,
                "status": f.status,
                "detail": f.detail,
                "value": f.value,
                "attack": r.meta.get("label", r.attack),
                "run_id": r.run_id,
            }
            for r in self.runs()
            for f in r.flags
        ]

    def table(self) -> str:
        """The runs as the text table ``robustarch evaluate`` prints."""
        from robustarch.evaluation.tables import format_results

        return format_results(self.runs())

    def __repr__(self) -> str:
        return f"Results({len(self.run_ids)} runs in {self.store.path})"


def model_ref(
    model: str | nn.Module | ModelRef,
    *,
    weights: str | os.PathLike[str] | bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    random_init: bool = False,
    name: str | None = None,
    arch: Mapping[str, Any] | None = None,
) -> ModelRef:
    """What ``evaluate`` accepts as a model, as a :class:`ModelRef`: a zoo id, ``package.module:function``,
    an ``nn.Module``, or a ModelRef."""
    if isinstance(model, ModelRef):
        return model
    path = weights if weights is None or isinstance(weights, bool) else str(weights)
    if isinstance(model, nn.Module):
        if weights is not None:
            raise RobustarchError("weights= is for zoo and factory models; load them into your module first")
        return ModelRef.from_module(model, mean=mean, std=std, id=name)
    if isinstance(model, str) and ":" in model:
        return ModelRef.factory(model, kwargs=arch, weights=path, mean=mean, std=std, id=name)
    if isinstance(model, str):
        if mean is not None or std is not None:
            raise RobustarchError(
                f"zoo model {model} normalizes inside itself with its published statistics; mean/std are for "
                "your own models"
            )
        return ModelRef.zoo(model, weights=path, overrides=arch, id=name, random_init=random_init)
    raise RobustarchError(
        f"model must be a zoo id, 'package.module:function' or a torch.nn.Module, got {type(model).__name__}"
    )


def data_ref(data: Any, *, n: int | None = None, split: str = "test", subset: str | None = None) -> DataRef:
    """What ``evaluate`` accepts as data, as a :class:`DataRef`: ``(dataset_id, root)``, a pair of tensors,
    a torch Dataset, or a DataRef."""
    if isinstance(data, DataRef):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], str):
        return DataRef(data[0], None if data[1] is None else str(data[1]), split, n, subset)
    from robustarch.data import as_source

    source = as_source(data)
    if n is not None and n < len(source):
        source = _first(source, n)
    return DataRef.given(source)


def _first(source: Any, n: int) -> Any:
    from dataclasses import replace

    from robustarch.data import spread_positions

    positions = spread_positions(len(source), n) if source.class_sorted else list(range(n))
    x, y = _gather(source, positions)
    from robustarch.data import source_from_tensors

    return replace(
        source_from_tensors(x, y, name=source.dataset, num_classes=source.num_classes),
        label=source.label,
    )


def _gather(source: Any, positions: list[int]) -> tuple[Any, Any]:
    import torch

    items = [source.batch(p, p + 1) for p in positions]
    return torch.cat([x for x, _ in items]), torch.cat([y for _, y in items])


def evaluate(
    model: str | nn.Module | ModelRef,
    data: Any,
    *,
    attacks: Sequence[Any] | None = None,
    preset: str | None = None,
    eps: float | None = None,
    n: int | None = None,
    batch_size: int = 128,
    device: str = "auto",
    store: str | os.PathLike[str] | Store | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    checks: bool = True,
    weights: str | os.PathLike[str] | bool | None = None,
    random_init: bool = False,
    name: str | None = None,
    arch: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    recheck: int = 64,
    progress: bool = False,
    estimate: bool = True,
) -> Results:
    """Clean and adversarial accuracy of ``model`` on ``data`` under attacks, with reliability checks.

    ``model``: a zoo id (with ``weights``, or ``random_init=True`` on purpose), ``package.module:function``,
    or any ``nn.Module`` mapping [0, 1] images to logits; given ``mean``/``std``, the normalization is put
    inside it (a module that expects normalized input would otherwise be attacked in the wrong space).
    ``data``: ``(dataset_id, root)``, a ``torch.utils.data.Dataset`` of (image, label), or ``(x, y)``
    tensors; ``n`` limits it (spread over the classes where the data are sorted by class). ``attacks``:
    names or ``(name, {params})`` (standard profile, the dataset's budget), or ``preset`` (default
    ``standard`` when neither is given); ``eps`` overrides every attack's budget. ``store``: a results file
    (runs resume) or None (in memory). ``arch``: a zoo model's architecture overrides or a factory's
    keyword arguments; ``name``: how results name the model. Returns :class:`Results`."""
    ref = model_ref(model, weights=weights, mean=mean, std=std, random_init=random_init, name=name, arch=arch)
    dref = data_ref(data, n=n)
    if attacks is not None and preset is not None:
        raise RobustarchError("give attacks or preset, not both")
    entries = list(attacks) if attacks is not None else [f"preset:{preset or 'standard'}"]
    plans = apply_overrides(resolve_attacks(entries, dref.budget_dataset), AttackOverrides(eps=eps))
    spec = EvaluationSpec(
        ref, dref, tuple(plans), batch_size, device, dtype, seed, checks, recheck,
        store=None if store is None or isinstance(store, Store) else str(store),
    )  # fmt: skip
    ref.validate(dref.budget_dataset)
    opened, _ = open_store(store)
    run_ids = run_specs([spec], opened, progress=progress, estimate=estimate)
    return Results(opened, run_ids)


def benchmark(
    model: str | nn.Module | ModelRef,
    dataset: str = "cifar10",
    data_root: str | os.PathLike[str] | None = None,
    *,
    threat_model: str = "Linf",
    eps: float | None = None,
    n_examples: int = 10000,
    preset: str = "standard",
    **kw: Any,
) -> tuple[float, float]:
    """(clean accuracy, robust accuracy) in RobustBench's convention: robust = correct under every attack of
    the preset at the budget (per example, the worst case), on the first ``n_examples`` (spread over the
    classes where the files are sorted by class). ``dataset``: a dataset id (with ``data_root``) or any data
    :func:`evaluate` takes. ``threat_model``: ``"Linf"`` or ``"L2"``. Other keyword arguments go to
    :func:`evaluate` (``attacks=`` replaces the preset)."""
    if threat_model not in ("Linf", "L2"):
        from robustarch.errors import UnknownNameError

        raise UnknownNameError("threat model", threat_model, ("Linf", "L2"))
    data = (dataset, data_root) if isinstance(dataset, str) else dataset
    if kw.get("attacks") is not None:  # explicit attacks replace the preset
        preset = None  # type: ignore[assignment]
    results = evaluate(model, data, preset=preset, eps=eps, n=n_examples, **kw)
    runs = results.runs()
    clean = next(r for r in runs if r.attack == "clean")
    budget = _budget(runs, eps)
    at_budget = [
        r
        for r in runs
        if r.attack != "clean"
        and r.attack_params.get("eps") == budget
        and (r.meta.get("traits") or {}).get("norm", "Linf") == threat_model
    ]
    if not at_budget:
        raise RobustarchError(f"preset {preset!r} has no {threat_model} attack at eps {budget}")
    robust = [o.adv_correct1 for o in results.store.examples(clean.run_id)]
    for r in at_budget:
        robust = [a and o.adv_correct1 for a, o in zip(robust, results.store.examples(r.run_id), strict=True)]
    return clean.clean_top1, sum(robust) / len(robust)


def _budget(runs: Sequence[RunResult], eps: float | None) -> float:
    """The benchmark's budget: ``eps`` if given, else the preset's main one (the most common eps, which
    leaves out the sweep's other points)."""
    if eps is not None:
        return eps
    from collections import Counter

    counts = Counter(r.attack_params["eps"] for r in runs if "eps" in r.attack_params)
    return counts.most_common(1)[0][0]
