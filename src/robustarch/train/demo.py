"""``robustarch demo``: the whole pipeline (train -> attack -> report) offline, on real data, in minutes.

Fashion-MNIST (Xiao et al., 2017) from Debian's ``dataset-fashion-mnist`` stands in for the study's datasets
(Devaguptapu et al., 2020): small variants of two handcrafted (ResNet-18, VGG16-BN) and two NAS (DARTS,
NSGA-Net) networks are trained with their published recipes (shortened), then the study's attack preset
(``paper``) and the field's standard preset (``standard``) run through the evaluation engine into a results
store, and the report (tables and figures) is rendered from that store.

Everything is resumable: running the demo again reuses finished models and stored results.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. ``paper_n`` / ``standard_n``: test examples the two attack presets run on
    (the standard preset holds APGD-CE/-T and Square, ~100x the cost of the paper's four attacks)."""

    models: tuple[DemoModel, ...]
    train_limit: int
    epochs: int
    test_limit: int
    paper_n: int
    standard_n: int
    batch_size: int = 64  # evaluation chunk size
    notes: list[str] = field(default_factory=list)


# Two handcrafted and two NAS families; widths chosen so that each trains in about a minute on one core.
FULL = DemoPlan(
    models=(
        DemoModel("resnet18", {"width": 8}),
        DemoModel("vgg16_bn", {"width": 8, "hidden": 64}),
        DemoModel("darts", {"C": 6, "layers": 4}),
        DemoModel("nsga_net", {"C": 6, "layers": 4}),
    ),
    train_limit=6000,
    epochs=2,
    test_limit=2000,
    paper_n=200,
    standard_n=32,
)
QUICK = DemoPlan(
    models=(
        DemoModel("resnet18", {"width": 4, "layers": [1, 1, 1, 1]}),
        DemoModel("vgg16_bn", {"width": 4, "hidden": 32}),
        DemoModel("darts", {"C": 4, "layers": 3}),
        DemoModel("nsga_net", {"C": 4, "layers": 3}),
    ),
    train_limit=1000,
    epochs=1,
    test_limit=500,
    paper_n=64,
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


def _study_toml(name: str, store: Path, data_root: Path, n: int, attacks: str, plan: DemoPlan,
                trained: list[tuple[DemoModel, Path, dict[str, Any]]], device: str) -> str:  # fmt: skip
    def inline(d: dict[str, Any]) -> str:
        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(value(x) for x in v) + "]"
            if isinstance(v, str):
                return f'"{v}"'
            return str(v)

        return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in d.items()) + " }"

    models = ",\n".join(
        f'  {{ name = "{m.name}", weights = "{path}", overrides = {inline(overrides)} }}'
        for m, path, overrides in trained
    )
    return (
        f"# written by `robustarch demo`: rerun with `robustarch study run {name}.toml`\n"
        f'[study]\nname = "{name}"\nstore = "{store}"\ndevice = "{device}"\n'
        f"batch_size = {plan.batch_size}\nseed = 0\n"
        f'attacks = ["{attacks}"]\n\n'
        f'[[datasets]]\nname = "{DATASET}"\nroot = "{data_root}"\nsplit = "test"\nlimit = {n}\n'
        f"models = [\n{models},\n]\n"
    )


def run_demo(
    out: str | Path = "robustarch-demo",
    *,
    quick: bool = False,
    data_root: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns a summary (clean accuracies, paths, wall times)."""
    from robustarch.train.trainer import TrainConfig, train

    t0 = time.perf_counter()
    plan = QUICK if quick else FULL
    root = check_data(Path(data_root) if data_root else FASHION_MNIST_ROOT)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    summary: dict[str, Any] = {"mode": "quick" if quick else "full", "out": str(out), "models": {}}
    log.info(
        "demo (%s): training %d models on %d Fashion-MNIST images for %d epoch(s) each, on %s with %d threads",
        summary["mode"], len(plan.models), plan.train_limit, plan.epochs, dev, torch.get_num_threads(),
    )  # fmt: skip

    # 1. train
    trained: list[tuple[DemoModel, Path, dict[str, Any]]] = []
    for i, m in enumerate(plan.models, 1):
        log.info("[%d/%d] training %s %s", i, len(plan.models), m.name, m.arch)
        t = time.perf_counter()
        result = train(
            TrainConfig(
                model=m.name, dataset=DATASET, data_root=root, out=out / "models" / m.name,
                epochs=plan.epochs, train_limit=plan.train_limit, test_limit=plan.test_limit,
                arch=dict(m.arch), device=dev, progress=progress,
            )
        )  # fmt: skip
        from robustarch.zoo import read_checkpoint

        _, meta = read_checkpoint(result.path)
        trained.append((m, result.path, meta["overrides"]))
        summary["models"][m.name] = {
            "recipe": result.recipe,
            "clean_accuracy": result.clean_accuracy,
            "n_test": result.n_test,
            "train_seconds": time.perf_counter() - t,
        }
        log.info("[%d/%d] %s: clean accuracy %.2f%% on %d test images (%.0f s)", i, len(plan.models),
                 m.name, 100 * result.clean_accuracy, result.n_test, time.perf_counter() - t)  # fmt: skip
    summary["train_seconds"] = time.perf_counter() - t0

    # 2. attack: the paper preset and the standard preset, into one results store
    t1 = time.perf_counter()
    from robustarch.evaluation import load_study, run_study

    store = out / "results.sqlite"
    for name, preset, n in (
        ("demo-paper", "paper", plan.paper_n),
        ("demo-standard", "standard", plan.standard_n),
    ):
        path = out / f"{name}.toml"
        path.write_text(_study_toml(name, store, root, n, f"preset:{preset}", plan, trained, dev))
        log.info("evaluating: attack preset %r on %d test images per model (%s)", preset, n, path.name)
        run_study(load_study(path), str(store), progress=progress)
    summary["evaluate_seconds"] = time.perf_counter() - t1

    # 3. report
    t2 = time.perf_counter()
    from robustarch.report import build_report

    written = build_report(store, out / "report")
    summary["report"] = {k: str(v) for k, v in written.items()}
    summary["report_seconds"] = time.perf_counter() - t2
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    import json

    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
