"""Study files end to end: generated CIFAR-10 files and real CIFAR-10 JPEGs, two zoo models, the paper
preset; the store holds what the table printed; re-runs compute nothing; bad study files and CLI flags."""

from __future__ import annotations

import pickle
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_path
from robustarch import zoo
from robustarch.attacks import preset
from robustarch.cli import main
from robustarch.evaluation.study import StudyError, load_study, study_status
from robustarch.store import Store

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# small variants of two handcrafted and two NAS families (the zoo's width/depth arguments)
TINY = {
    "resnet18": {"width": 4},
    "darts": {"C": 4, "layers": 3, "auxiliary": False},
    "vgg16_bn": {"width": 4, "hidden": 16},
    "nsga_net": {"C": 4, "layers": 3, "auxiliary": False},
}


def make_cifar10(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """A CIFAR-10 python release of ``10 * per_class`` generated images (class-dependent colour + noise)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    base = rng.integers(40, 216, (10, 3, 1, 1))
    images = base[labels] + rng.normal(0, 30, (len(labels), 3, 32, 32))
    data = images.clip(0, 255).astype(np.uint8).reshape(len(labels), 3072)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return root


def tiny_models_toml(models=("resnet18", "darts")) -> str:
    rows = []
    for m in models:
        ov = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY[m].items())
        rows.append(f'  {{ name = "{m}", overrides = {{ {ov} }}, random_init = true }},')
    return "\n".join(rows)


def write_study(
    tmp: Path,
    *,
    limit: int = 12,
    batch: int = 4,
    models=("resnet18", "darts"),
    attacks: str = '["preset:paper"]',
    extra: str = "",
) -> Path:
    data = make_cifar10(tmp / "data" / "cifar10")
    text = (
        textwrap.dedent(f"""\
        [study]
        name = "tiny"
        store = "tiny.sqlite"
        device = "cpu"
        batch_size = {batch}
        attacks = {attacks}
        {extra}
        [[datasets]]
        name = "cifar10"
        root = "{data}"
        verify = false
        allow_partial = true
        limit = {limit}
        models = [
        """)
        + tiny_models_toml(models)
        + "\n]\n"
    )
    path = tmp / "study.toml"
    path.write_text(text)
    return path


def parse_grid(text: str) -> dict[tuple[str, str], float]:
    """{(model, column): value} from the grid `study run` prints."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head_i = next(i for i, ln in enumerate(lines) if ln.startswith("model"))
    cols = lines[head_i].split()[1:]
    out = {}
    for ln in lines[head_i + 1 :]:
        parts = ln.split()
        if len(parts) != len(cols) + 1:
            break
        out.update({(parts[0], c): float(v) for c, v in zip(cols, parts[1:], strict=True)})
    return out


def test_study_end_to_end_generated(tmp_path, capsys):
    study = write_study(tmp_path, limit=8, batch=8)
    assert main(["study", "run", str(study), "--no-progress"]) == 0
    printed = parse_grid(capsys.readouterr().out)
    store = Store(tmp_path / "tiny.sqlite")
    results = store.results()
    labels = ["clean", *preset("paper")]
    assert len(results) == 2 * len(labels) and all(r.complete and r.n == 8 for r in results)
    assert {(m, lab) for m, lab in printed} == {(m, lab) for m in ("resnet18", "darts") for lab in labels}
    for r in results:
        acc = r.clean_top1 if r.attack == "clean" else r.adv_top1
        assert printed[(r.model, r.meta["label"])] == pytest.approx(100 * acc, abs=0.005)
        assert r.meta["versions"]["torch"] == torch.__version__ and r.meta["code_revision"]
        assert r.profile in ("paper", "none") and r.adv_metric == "perturbed"
        if r.attack != "clean":
            assert r.attack_params == dict(preset("paper")[r.attack].params)
            assert {f.check for f in r.flags} >= {"budget", "eps0_identity", "noise_baseline"}
            assert next(f for f in r.flags if f.check == "eps0_identity").status == "ok"
        else:  # the model-level checks sit on the clean run (no large_eps probe: the paper profile only)
            checks = {f.check: f.status for f in r.flags}
            assert set(checks) == {"deterministic_forward", "finite_logits", "raw_logits", "zero_gradient"}
            assert checks["deterministic_forward"] == checks["finite_logits"] == "ok"
    # the paper's PGD never uses its 0.3 budget: flagged
    pgd = next(r for r in results if r.attack == "pgd")
    assert next(f for f in pgd.flags if f.check == "budget").status == "warn"
    assert pgd.linf_max <= 10 * 0.007 + 1e-6
    # a second run computes nothing: same rows, no new chunk commits
    before = store._db.execute("SELECT run_id, chunk_index, committed_at, writer FROM chunks").fetchall()
    assert main(["study", "run", str(study), "--no-progress"]) == 0
    after = store._db.execute("SELECT run_id, chunk_index, committed_at, writer FROM chunks").fetchall()
    assert sorted(before) == sorted(after)
    # status reports everything complete
    capsys.readouterr()
    assert main(["study", "status", str(study)]) == 0
    out = capsys.readouterr().out
    assert f"{len(results)}/{len(results)} runs complete" in out
    assert out.count("complete") == len(results) + 1


def test_status_before_and_after_partial_run(tmp_path):
    study = load_study(write_study(tmp_path, models=("resnet18",), attacks='["fgsm"]'))
    rows = study_status(study)
    assert [(r.attack, r.done, r.complete) for r in rows] == [("clean", 0, False), ("fgsm", 0, False)]
    assert all(r.chunks == 3 for r in rows)
    assert not Path(study.store).exists()  # status writes nothing


def test_evaluate_real_cifar10_jpeg(tmp_path, capsys):
    root = shared_path("data", "cifar10-jpeg")
    store = tmp_path / "e.sqlite"
    argv = [
        "evaluate",
        "--model",
        "vgg16_bn",
        "--dataset",
        "cifar10-jpeg",
        "--data-root",
        str(root),
        "--preset",
        "paper",
        "--subset",
        "balanced:10",
        "--batch-size",
        "10",
        "--device",
        "cpu",
        "--store",
        str(store),
        "--no-progress",
        "--random-init",
    ]
    for k, v in TINY["vgg16_bn"].items():
        argv += ["--override", f"{k}={v}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    results = Store(store).results()
    assert len(results) == 5 and all(r.n == 10 and r.dataset_label == "CIFAR-10 (JPEG q75)" for r in results)
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("vgg16_bn")]
    assert len(rows) == 5
    by_label = {r.meta["label"]: r for r in results}
    for row in rows:
        r = by_label[row[1]]
        top1 = r.clean_top1 if r.attack == "clean" else r.adv_top1
        top5 = r.clean_top5 if r.attack == "clean" else r.adv_top5
        nums = [float(x) for x in re.findall(r"\d+\.\d+", " ".join(row[4:]))]
        assert nums[0] == pytest.approx(100 * top1, abs=0.005)
        assert nums[3] == pytest.approx(100 * top5, abs=0.005)
    # the 10 examples are the balanced subset's: 1 per class
    ex = Store(store).examples(results[0].run_id)
    assert sorted(np.bincount([e.label for e in ex]).tolist()) == [1] * 10


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_paper_preset_names_every_table_model(tmp_path):
    for ds in ("cifar10", "cifar100", "imagenet"):
        (tmp_path / "d" / ds).mkdir(parents=True)
    raw = Path(load_study.__code__.co_filename).parents[1] / "configs" / "studies" / "paper.toml"
    for m in re.findall(r'weights = "\{weights\}/([^"]+)"', raw.read_text()):
        _touch(tmp_path / "w" / m)
    for m in re.findall(r'net_config = "\{weights\}/([^"]+)"', raw.read_text()):
        (tmp_path / "w" / m).mkdir(parents=True, exist_ok=True)
    study = load_study("paper", paths={"data": str(tmp_path / "d"), "weights": str(tmp_path / "w")})
    got = {d.name: [m.id for m in d.models] for d in study.datasets}
    cifar = [
        "vgg16_bn",
        "resnet18",
        "resnet50",
        "densenet121",
        "densenet169",
        "darts",
        "pdarts",
        "nsga_net",
        "pc_darts",
    ]
    assert got["cifar10"] == cifar and got["cifar100"] == cifar
    table3 = [
        "vgg16_bn",
        "resnet18",
        "resnet50",
        "densenet121",
        "densenet169",
        "darts",
        "pdarts",
        "pc_darts",
        "densenas_large",
        "densenas_r3",
    ]
    table4 = [
        "densenas_a",
        "densenas_b",
        "densenas_c",
        "densenas_large",
        "densenas_r1",
        "densenas_r2",
        "densenas_r3",
    ]
    assert set(got["imagenet"]) == set(table3) | set(table4)
    for d in study.datasets:
        plans = study.attack_plans(d)
        assert [p.label for p in plans[:4]] == ["fgsm", "rfgsm", "stepll", "pgd"]
        assert all(p.profile == "paper" for p in plans[:4])
        # then what the published numbers measure (preset:explain; its paper attacks repeat the four)
        from robustarch import attacks as ra

        assert [p.label for p in plans[4:]] == list(ra.preset("explain", d.name))
    assert study.store == str(Path.cwd() / "paper.sqlite")  # a preset's relative paths mean the cwd
    # without the files, every missing one is named before anything runs
    with pytest.raises(StudyError) as err:
        load_study("paper", paths={"data": str(tmp_path / "nodata"), "weights": str(tmp_path / "w")})
    assert str(err.value).count("does not exist") == 3


BAD_STUDIES = [
    ("[study]\nbatch_sise = 4\n", "unknown key 'batch_sise'. Did you mean 'batch_size'"),
    ("[studdy]\n", "unknown key 'studdy'"),
    ("[study]\nbatch_size = 'big'\n", "batch_size must be int"),
    ("[study]\nbatch_size = 0\n", "batch_size must be >= 1"),
    ("[study]\ndtype = 'float16'\n", "unknown dtype 'float16'"),
    ("[study]\ndevice = 'tpu'\n", "device"),
    ("[study]\nattacks = ['fgsn']\n", "unknown attack 'fgsn'. Did you mean 'fgsm'"),
    ("[study]\nattacks = ['preset:papper']\n", "unknown attack preset 'papper'"),
    ("[attacks.strong]\nattack = 'pgd'\nepsilon = 0.1\n", "unknown parameter of attack 'pgd'"),
    ("[attacks.strong]\nattack = 'pgd'\neps = 5.0\n", "eps must be <= 1"),
    ("[[datasets]]\nname = 'cifar11'\nroot = '.'\nmodels = ['resnet18']\n", "unknown dataset 'cifar11'"),
    ("[[datasets]]\nname = 'cifar10'\nroot = 'missing'\nmodels = ['resnet18']\n", "does not exist"),
    ("[[datasets]]\nname = 'cifar10'\nroot = '.'\nmodels = ['resnet19']\n", "Did you mean 'resnet18'"),
    (
        "[[datasets]]\nname = 'cifar10'\nroot = '.'\nmodels = [{ name = 'resnet18', weights = 'no.pt' }]\n",
        "weights file",
    ),
    (
        "[[datasets]]\nname = 'cifar10'\nroot = '.'\nmodels = [{ name = 'darts', overrides = { K = 1 } }]\n",
        "unknown argument of model 'darts'",
    ),
    (
        "[[datasets]]\nname = 'cifar10'\nroot = '.'\nmodels = [{ name = 'darts', colour = 1 }]\n",
        "unknown key 'colour'",
    ),
    ("[[datasets]]\nname = 'cifar10'\nroot = '.'\nmodels = ['resnet18', 'resnet18']\n", "appears twice"),
    ("[[datasets]]\nname = 'cifar10'\nroot = '{dat}/x'\nmodels = ['resnet18']\n", "unknown placeholder"),
    ("[[datasets]]\nname = 'cifar10'\nroot = '.'\nlimit = -3\nmodels = ['resnet18']\n", "limit must be >= 1"),
    ("[[datasets]]\nname = 'cifar10'\nroot = '.'\n", "names no models"),
    ("[study]\nname = 'x'\n", "names no datasets"),
    ("[study\n", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD_STUDIES, ids=[m[:30] for _, m in BAD_STUDIES])
def test_bad_study_files_are_clear_errors(tmp_path, capsys, text, message):
    body = text
    if "[[datasets]]" not in text and text != "[study\n" and "names no datasets" not in message:
        body += "\n[[datasets]]\nname = 'cifar10'\nroot = '.'\nmodels = ['resnet18']\n"
    if "[study]" not in body and "attacks" not in body:
        body = "[study]\nattacks = ['fgsm']\n" + body
    elif "[study]" in body and "attacks =" not in body.split("[[datasets]]")[0]:
        body = body.replace("[study]\n", "[study]\nattacks = ['fgsm']\n", 1)
    path = tmp_path / "bad.toml"
    path.write_text(body)
    assert main(["study", "run", str(path), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "s.sqlite").exists()  # nothing ran


def test_several_problems_reported_together(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        "[study]\nattacks = ['fgsm']\ncolour = 1\n[[datasets]]\nname = 'cifar10'\nroot = 'nope'\n"
        "models = ['resnet19']\n"
    )
    with pytest.raises(StudyError, match="3 problem"):
        load_study(path)


def test_missing_study_file_and_selection(tmp_path, capsys):
    assert main(["study", "run", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    study = write_study(tmp_path)
    assert main(["study", "status", str(study), "--models", "resnet81"]) == 2
    assert "Did you mean 'resnet18'" in capsys.readouterr().err
    assert main(["study", "status", str(study), "--datasets", "cifar100"]) == 2
    assert main(["study", "run", str(study), "--path", "oops"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


BAD_FLAGS = [
    (["--limit", "0"], "--limit must be >= 1"),
    (["--batch-size", "-1"], "--batch-size must be >= 1"),
    (["--attacks", "fgsm,pgdd"], "unknown attack 'pgdd'"),
    (["--preset", "papr"], "unknown attack preset 'papr'"),
    (["--attacks", "fgsm", "--profile", "historic"], "unknown attack profile 'historic'"),
    (["--override", "width"], "--arch expects NAME=VALUE"),
    (["--arch", "width"], "--arch expects NAME=VALUE"),
    (["--override", "widht=4"], "unknown argument of model 'resnet18'"),
    (["--weights", "/nonexistent/w.pt"], "weights file /nonexistent/w.pt does not exist"),
    (["--dtype", "float64"], "unknown dtype 'float64'"),
    (["--device", "quantum"], "unknown device 'quantum'"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[m[:25] for _, m in BAD_FLAGS])
def test_bad_evaluate_flags(tmp_path, capsys, flags, message):
    root = make_cifar10(tmp_path / "c")
    argv = [
        "evaluate",
        "--model",
        "resnet18",
        "--dataset",
        "cifar10",
        "--data-root",
        str(root),
        "--store",
        str(tmp_path / "s.sqlite"),
        "--no-progress",
        *flags,
    ]
    if "--attacks" not in flags and "--preset" not in flags:
        argv += ["--attacks", "fgsm"]
    if "--weights" not in flags:
        argv.append("--random-init")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_evaluate_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "evaluate",
                "--model",
                "resnet18",
                "--dataset",
                "cifar10",
                "--preset",
                "paper",
                "--attacks",
                "fgsm",
            ]
        )
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", "cifar10"])
    assert "--model" in capsys.readouterr().err


def test_unknown_model_for_evaluate(tmp_path, capsys):
    root = make_cifar10(tmp_path / "c")
    assert (
        main(
            [
                "evaluate",
                "--model",
                "densenas_a",
                "--dataset",
                "cifar10",
                "--data-root",
                str(root),
                "--attacks",
                "fgsm",
                "--store",
                str(tmp_path / "s.sqlite"),
            ]
        )
        == 2
    )
    assert "unknown model for dataset 'cifar10'" in capsys.readouterr().err


def test_weights_file_identifies_the_model(tmp_path):
    """A run with a checkpoint is keyed by the file's hash; the checkpoint's overrides rebuild the net."""
    net = zoo.build("resnet18", "cifar10", **TINY["resnet18"])
    ckpt = zoo.save_checkpoint(net, tmp_path / "w" / "r18.pt", {"overrides": TINY["resnet18"]})
    data = make_cifar10(tmp_path / "data")
    path = tmp_path / "s.toml"
    path.write_text(
        f"[study]\ndevice = 'cpu'\nbatch_size = 8\nattacks = ['fgsm']\nstore = 's.sqlite'\n"
        f"[[datasets]]\nname = 'cifar10'\nroot = '{data}'\nverify = false\nallow_partial = true\n"
        f"limit = 8\nmodels = [{{ name = 'resnet18', weights = '{ckpt}' }}]\n"
    )
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    [clean, fgsm] = sorted(Store(tmp_path / "s.sqlite").results(), key=lambda r: r.attack)
    assert clean.weights_hash == fgsm.weights_hash == zoo.file_sha256(ckpt)[:16]
    assert clean.params_count == zoo.count_parameters(net, exclude_auxiliary=True)
