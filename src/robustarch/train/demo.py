"""``robustarch demo``: the whole pipeline (train -> attack -> report) offline, on real data, in minutes.

Fashion-MNIST (Xiao et al., 2017) from Debian's ``dataset-fashion-mnist`` stands in for the study's datasets
(Devaguptapu et al., 2020): small variants of two handcrafted (ResNet-18, DenseNet-121) and two NAS (DARTS,
NSGA-Net) networks are trained with their published recipes (shortened: a few epochs on a part of the
training set, batch 64, lr 0.05), then the study's attacks run three ways through the evaluation engine into
a results store -- as the released code ran them (the normalized-input flaw emulated, with the clamp alone
beside them), at the same nominal eps on [0,1] inputs (preset ``paper``), and the field's standard attacks
(``standard``, cut for time) -- and the report, with its "What the published numbers measure" section, is
rendered from that store.

Everything is resumable: running the demo again reuses finished models and stored results.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustarch.errors import RobustarchError

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
DATASET = "fashion-mnist"


@dataclass(frozen=True)
class DemoModel:
    name: str  # zoo entry
    arch: dict[str, Any]  # small-variant overrides
    cost: float = 1.0  # relative compute per image (to balance the worker processes)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. ``paper_n``: test examples the paper's attacks run on (as released and on
    [0,1]); ``standard_n``: those the standard attacks run on (APGD-CE/-T and Square: ~30x the cost of the
    paper's attacks per image). A 95% Wilson interval is at most +-5 pp from n = 385, +-10 pp from n = 97."""

    models: tuple[DemoModel, ...]
    train_n: int  # a class-balanced sample of the training split
    epochs: int
    test_limit: int
    paper_n: int
    standard_n: int
    train_batch: int = 64
    lr: float = 0.05
    batch_size: int = 64  # evaluation chunk size


# Two handcrafted and two NAS families of the study. Small widths: each network trains in about a minute
# on one core. (VGG16-BN this narrow does not start learning within a few hundred steps, so the second
# handcrafted network is DenseNet-121, the study's most robust handcrafted family.)
FULL = DemoPlan(
    models=(
        DemoModel("resnet18", {"width": 8}, cost=1),
        DemoModel("densenet121", {"width": 8, "block_config": [2, 4, 6, 4]}, cost=1),
        DemoModel("darts", {"C": 6, "layers": 4}, cost=4),
        DemoModel("nsga_net", {"C": 6, "layers": 4}, cost=4),
    ),
    train_n=8000,
    epochs=2,
    test_limit=2000,
    paper_n=400,
    standard_n=100,
)
QUICK = DemoPlan(
    models=(
        DemoModel("resnet18", {"width": 4, "layers": [1, 1, 1, 1]}, cost=1),
        DemoModel("densenet121", {"width": 4, "block_config": [1, 2, 2, 1]}, cost=1),
        DemoModel("darts", {"C": 4, "layers": 3}, cost=3),
        DemoModel("nsga_net", {"C": 4, "layers": 3}, cost=3),
    ),
    train_n=3000,
    epochs=1,
    test_limit=1000,
    paper_n=100,
    standard_n=8,
)


def check_data(root: Path) -> Path:
    """The Fashion-MNIST idx files, or a clear error saying how to install them."""
    needed = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    missing = [n for n in needed if not ((root / f"{n}.gz").is_file() or (root / n).is_file())]
    if missing:
        raise RobustarchError(
            f"the demo trains on Fashion-MNIST, which is not at {root} (missing {', '.join(missing)}). "
            "Install Debian's copy with `sudo apt-get install dataset-fashion-mnist`, or pass --data-root "
            "DIR with the four idx files."
        )
    return root


# The standard attacks the demo runs: preset("standard") cut where it buys least for the demo's time: APGD-T
# on 3 target classes (not 9), Square with 500 queries (not 5,000), the PGD sweep at 1, 4, 8, 16 /255 (not
# also 2). FGSM, R-FGSM, StepLL, PGD-10 and APGD-CE are the preset's own, which the explain section needs.
STANDARD_CUTS: dict[str, dict[str, Any]] = {
    "apgd-t": {"n_target_classes": 3},
    "square": {"queries": 500},
    "pgd-eps2": {},  # left out (empty = not run)
}


def _attack_def(attack: Any) -> dict[str, Any]:
    """A study file's [attacks.NAME] table for a configured attack."""
    return {"attack": attack.name, "profile": attack.profile, **attack.params}


def demo_attacks() -> dict[str, tuple[list[str], dict[str, dict[str, Any]]]]:
    """Per demo study, its attack list and its [attacks.*] tables: ``demo-paper`` runs the paper's attacks
    as released (``preset("explain")``'s ``clamp`` and ``*-released``) and on [0,1] (``preset:paper``);
    ``demo-standard`` the standard attacks with :data:`STANDARD_CUTS`."""
    from robustarch import attacks as ra

    explain = ra.preset("explain", DATASET)
    released = {k: _attack_def(a) for k, a in explain.items() if k == "clamp" or k.endswith("-released")}
    standard = {}
    for key, attack in ra.preset("standard", DATASET).items():
        cut = STANDARD_CUTS.get(key)
        if cut == {}:
            continue
        standard[key] = {**_attack_def(attack), **(cut or {})}
    return {
        "demo-paper": (["preset:paper", *released], released),
        "demo-standard": (list(standard), standard),
    }


def _study_toml(
    name: str, store: Path, data_root: Path, n: int, attacks: tuple[list[str], dict[str, dict[str, Any]]],
    plan: DemoPlan, weights: dict[str, Path], device: str,
) -> str:  # fmt: skip
    """A study file (docs/study.md) for the demo's models: the demo's evaluation is an ordinary study. The
    architecture overrides are not repeated here: zoo.load reads them from each checkpoint's metadata."""
    from robustarch.evaluation import toml_value

    entries, defs = attacks
    tables = "".join(
        f"[attacks.{key}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items()) + "\n"
        for key, d in defs.items()
    )
    rows = ",\n".join(
        f"  {{ name = {toml_value(m.name)}, weights = {toml_value(str(weights[m.name]))} }}"
        for m in plan.models
    )
    return (
        f"# written by `robustarch demo`; rerun with `robustarch study run {name}.toml`\n"
        f"[study]\nname = {toml_value(name)}\nstore = {toml_value(str(store))}\n"
        f"device = {toml_value(device)}\nbatch_size = {plan.batch_size}\nseed = 0\n"
        f"attacks = {toml_value(entries)}\n\n{tables}"
        f"[[datasets]]\nname = {toml_value(DATASET)}\nroot = {toml_value(str(data_root))}\n"
        f'split = "test"\nlimit = {n}\nmodels = [\n{rows},\n]\n'
    )


def _configure_worker(level: int, threads: int) -> None:
    """A spawned worker: one intra-op thread (the workers share the cores) and the parent's log level."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("robustarch").setLevel(level)


def _train_one(
    m: DemoModel, plan: DemoPlan, root: str, out: str, device: str, progress: bool
) -> dict[str, Any]:
    from robustarch.train.trainer import TrainConfig, train

    t = time.perf_counter()
    log.info("training %s %s", m.name, m.arch)
    result = train(
        TrainConfig(
            model=m.name, dataset=DATASET, data_root=root, out=Path(out) / "models" / m.name,
            epochs=plan.epochs, batch_size=plan.train_batch, lr=plan.lr,
            train_subset=f"balanced:{plan.train_n}", test_limit=plan.test_limit, arch=dict(m.arch),
            device=device, progress=progress,
        )
    )  # fmt: skip
    from robustarch.zoo import read_checkpoint

    _, meta = read_checkpoint(result.path)
    seconds = time.perf_counter() - t
    log.info("%s: clean accuracy %.2f%% on %d test images (%.0f s)", m.name, 100 * result.clean_accuracy,
             result.n_test, seconds)  # fmt: skip
    return {
        "weights": str(result.path),
        "overrides": meta["overrides"],
        "recipe": result.recipe,
        "clean_accuracy": result.clean_accuracy,
        "n_test": result.n_test,
        "train_seconds": seconds,
    }


def _evaluate(studies: list[str], model_ids: list[str], store: str, progress: bool) -> float:
    """Run the given study files for ``model_ids``, one model and one study at a time (a progress line
    each), into ``store`` (several processes may write to it)."""
    from robustarch.evaluation import load_study, run_study

    t = time.perf_counter()
    for model_id in model_ids:
        for path in studies:
            t_run = time.perf_counter()
            # other models' weights may still be training (their files do not exist yet)
            study = load_study(path, check_files=False).select(models=[model_id])
            log.info("attacking %s: %s", model_id, Path(path).stem)
            run_study(study, store, progress=progress)
            log.info("attacked %s: %s (%.0f s)", model_id, Path(path).stem, time.perf_counter() - t_run)
    return time.perf_counter() - t


def _run_in_pool(
    pool: Any, jobs: int, order: list[DemoModel], train_args: dict[str, tuple], studies: list[str], store: str
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Train and attack on ``jobs`` workers, one task per free worker: trainings first (longest first), then
    the ready attack task of the costliest model, its standard attacks before its paper ones (``studies``'
    order). A queue filled in submission order started the slowest model's standard attacks, the longest
    task, last (the full demo's last 317 s ran on one worker)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    to_train = list(order)
    ready: list[tuple[float, int, DemoModel, str]] = []  # (-cost, study index, model, study)
    running: dict[Any, tuple[str, DemoModel]] = {}
    trained: dict[str, dict[str, Any]] = {}
    attack_seconds: dict[str, float] = {}
    while to_train or ready or running:
        while len(running) < jobs and (to_train or ready):
            if to_train:
                m = to_train.pop(0)
                running[pool.submit(_train_one, *train_args[m.name])] = ("train", m)
            else:
                ready.sort(key=lambda t: t[:2])
                _, _, m, study = ready.pop(0)
                running[pool.submit(_evaluate, [study], [m.name], store, False)] = ("attack", m)
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            kind, m = running.pop(future)
            if kind == "train":
                trained[m.name] = future.result()
                ready.extend((-m.cost, i, m, study) for i, study in enumerate(studies))
            else:
                attack_seconds[m.name] = attack_seconds.get(m.name, 0.0) + future.result()
    return trained, attack_seconds


def run_demo(
    out: str | Path = "robustarch-demo",
    *,
    quick: bool = False,
    data_root: str | Path | None = None,
    device: str | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns a summary (clean accuracies, paths, wall times).

    ``jobs`` worker processes (default: one per CPU core, at most 4; 1 on a GPU) train and evaluate the
    models side by side with one thread each: these small networks are latency-bound, so processes use
    the cores far better than intra-op threads. With ``jobs=1`` everything runs here, with progress bars.
    """
    t0 = time.perf_counter()
    plan = QUICK if quick else FULL
    root = check_data(Path(data_root) if data_root else FASHION_MNIST_ROOT)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if jobs is None:
        jobs = 1 if dev.startswith("cuda") else max(1, min(4, os.cpu_count() or 1))
    jobs = max(1, min(jobs, len(plan.models)))
    summary: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "out": str(out),
        "jobs": jobs,
        "models": {},
    }
    log.info(
        "demo (%s): %d models on %d Fashion-MNIST training images x %d epoch(s); %d process(es) on %s",
        summary["mode"], len(plan.models), plan.train_n, plan.epochs, jobs, dev,
    )  # fmt: skip

    store = out / "results.sqlite"
    weights = {m.name: out / "models" / m.name / "model.pt" for m in plan.models}
    studies = []  # the standard attacks first: they cost most
    attack_sets = demo_attacks()
    for name, n in (("demo-standard", plan.standard_n), ("demo-paper", plan.paper_n)):
        path = out / f"{name}.toml"
        path.write_text(_study_toml(name, store, root, n, attack_sets[name], plan, weights, dev))
        studies.append(str(path))
    log.info("attacks: the paper's as released and on [0,1] on %d, the standard ones on %d test images per "
             "model", plan.paper_n, plan.standard_n)  # fmt: skip

    pool = None
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        level = logging.getLogger("robustarch").getEffectiveLevel()
        pool = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_configure_worker,
            initargs=(level, 1),
        )  # fmt: skip
    order = sorted(plan.models, key=lambda m: -m.cost)  # longest first
    train_args = {m.name: (m, plan, str(root), str(out), dev, progress and pool is None) for m in order}
    trained: dict[str, dict[str, Any]] = {}
    attack_seconds: dict[str, float] = {}
    try:
        if pool is None:  # here, one after the other, with progress bars
            for m in order:
                trained[m.name] = _train_one(*train_args[m.name])
            for m in order:
                attack_seconds[m.name] = _evaluate(studies, [m.name], str(store), progress)
        else:
            trained, attack_seconds = _run_in_pool(pool, jobs, order, train_args, studies, str(store))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for m in plan.models:
        summary["models"][m.name] = {
            **{k: v for k, v in trained[m.name].items() if k != "overrides"},
            "attack_seconds": attack_seconds[m.name],
        }
    summary["train_seconds"] = sum(r["train_seconds"] for r in trained.values())
    summary["attack_seconds"] = sum(attack_seconds.values())

    # 3. report, rendered from the store only
    t2 = time.perf_counter()
    from robustarch.report import build_report

    written = build_report(store, out / "report")
    summary["report"] = {k: str(v) for k, v in written.items()}
    summary["report_seconds"] = time.perf_counter() - t2
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
