"""``robustarch demo``: its reduced form (--quick) runs end to end here, as in CI, and writes the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustarch import zoo
from robustarch.errors import RobustarchError
from robustarch.train.demo import FASHION_MNIST_ROOT, FULL, QUICK, check_data, run_demo


def test_missing_data_says_how_to_install_it(tmp_path):
    with pytest.raises(RobustarchError, match="apt-get install dataset-fashion-mnist"):
        check_data(tmp_path)


@pytest.mark.parametrize("plan", [FULL, QUICK], ids=["full", "quick"])
def test_demo_trains_two_handcrafted_and_two_nas_families(plan):
    families = [zoo.get_spec(m.name, "fashion-mnist").family for m in plan.models]
    assert families.count("handcrafted") >= 2 and families.count("nas") >= 2
    for m in plan.models:  # every small variant is a valid zoo build
        zoo.build_kwargs(m.name, "fashion-mnist", **m.arch)


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_quick_demo_end_to_end(tmp_path):
    from robustarch.store import Store

    summary = run_demo(tmp_path, quick=True, jobs=2, progress=False)
    report = Path(summary["report"]["md"])
    assert report.is_file() and Path(summary["report"]["html"]).is_file()
    figures = list((tmp_path / "report" / "figures").glob("*.png"))
    assert figures
    text = report.read_text()
    assert "profile 'paper'" in text and "profile 'standard'" in text
    assert "## What the published numbers measure: Fashion-MNIST" in text and "**Reading.**" in text
    assert (tmp_path / "report" / "figures" / "explain-fashion-mnist.pdf").is_file()
    assert json.loads((tmp_path / "demo.json").read_text())["models"] == summary["models"]

    with Store(tmp_path / "results.sqlite") as store:
        runs = store.results(complete=True)
    for m in QUICK.models:
        trained = summary["models"][m.name]
        # the accuracy the trainer measured is the one stored in the checkpoint the evaluation loaded
        loaded = zoo.load(m.name, "fashion-mnist", weights=trained["weights"])
        assert loaded.checkpoint_metadata["clean_accuracy"] == trained["clean_accuracy"]
        assert trained["clean_accuracy"] > 0.12  # above chance (10 classes) after a short training
        attacks = {(r.profile, r.attack) for r in runs if r.model == m.name}
        assert {("paper", "fgsm"), ("paper", "rfgsm"), ("paper", "stepll"), ("paper", "pgd")} <= attacks
        assert {("standard", "apgd-ce"), ("standard", "apgd-t"), ("standard", "square")} <= attacks
        released = {
            r.attack for r in runs if r.model == m.name and r.attack_params.get("emulate_normalized_inputs")
        }
        assert released == {"fgsm", "rfgsm", "stepll", "pgd"}  # as released (FGSM also at eps 0: the clamp)
