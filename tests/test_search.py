"""robustarch search: the PC-DARTS supernet pieces, the genotype derivation with P-DARTS' skip cap, the CI
smoke run (a tiny supernet whose architecture weights move, and whose derived cell trains and is evaluated),
bit-exact resume, and data-parallel search (torchrun, gloo) equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustarch import zoo
from robustarch.errors import RobustarchError
from robustarch.search.search import CHECKPOINT_NAME, SearchConfig, Searcher, search, split_halves
from robustarch.search.supernet import (
    EDGES,
    SEARCH_SPACE,
    PartialMixedOp,
    Supernet,
    channel_shuffle,
    derive_genotype,
    node_softmax,
)
from robustarch.train import init_distributed
from robustarch.zoo.genotypes import Genotype, load_genotype_file
from robustarch.zoo.operations import OPS

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
# the smallest search that exercises every part: 3 cells (both reductions), K = 2, 2 steps of 10 per epoch
TINY = ["--C", "4", "--layers", "3", "--partial", "2", "--batch-size", "10", "--arch-warmup", "0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------- pieces


def test_search_space_is_the_zoo_ops_dictionary():
    assert set(SEARCH_SPACE) <= set(OPS) and SEARCH_SPACE[0] == "none" and len(SEARCH_SPACE) == 8


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert torch.equal(channel_shuffle(channel_shuffle(x, 2), 3), x)  # 2 x 3 then 3 x 2 is the identity


def test_partial_mixed_op_mixes_a_quarter_and_passes_the_rest():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    full = PartialMixedOp(8, 1, k=1).eval()
    w = torch.softmax(torch.randn(len(SEARCH_SPACE)), 0)
    with torch.no_grad():
        expected = sum(wi * op(x) for wi, op in zip(w, full.ops, strict=True))
        torch.testing.assert_close(full(x, w), expected)  # K = 1: the DARTS mixed op
        part = PartialMixedOp(8, 1, k=4).eval()
        assert all(p.shape[1] in (2, 1) or p.dim() < 2 for p in part.parameters())  # ops see C / K channels
        out = part(x, torch.zeros(len(SEARCH_SPACE)))  # no mixture: only the bypass survives
        torch.testing.assert_close(out, channel_shuffle(torch.cat([torch.zeros(2, 2, 6, 6), x[:, 2:]], 1), 4))
        reduced = PartialMixedOp(8, 2, k=4).eval()(x, w)
        assert reduced.shape == (2, 8, 3, 3)


def test_edge_normalization_is_a_softmax_per_node():
    weights = node_softmax(torch.randn(EDGES))
    sums = [weights[a:b].sum().item() for a, b in ((0, 2), (2, 5), (5, 9), (9, 14))]
    assert sums == pytest.approx([1.0] * 4)


def _scores(strong: dict[int, str], default_op: str = "sep_conv_3x3") -> torch.Tensor:
    """Edge scores where row r prefers strong[r] (score 0.9) and every row has `default_op` at 0.5."""
    s = torch.full((EDGES, len(SEARCH_SPACE)), 0.01)
    s[:, SEARCH_SPACE.index(default_op)] = 0.5
    s[:, 0] = 2.0  # "none" is never chosen, however strong
    for row, op in strong.items():
        s[row, SEARCH_SPACE.index(op)] = 0.9 + 0.001 * row
    return s


def test_derivation_takes_the_two_strongest_edges_and_never_none(tmp_path):
    # node 0: rows 0-1; node 1: rows 2-4; node 2: rows 5-8; node 3: rows 9-13
    scores = _scores(
        {
            1: "dil_conv_3x3",
            0: "max_pool_3x3",
            4: "sep_conv_5x5",
            2: "avg_pool_3x3",
            8: "dil_conv_5x5",
            6: "sep_conv_3x3",
            13: "max_pool_3x3",
            10: "avg_pool_3x3",
        }
    )
    g = derive_genotype(scores, scores, skip_cap=None)
    assert g.normal == (
        ("dil_conv_3x3", 1),
        ("max_pool_3x3", 0),
        ("sep_conv_5x5", 2),
        ("avg_pool_3x3", 0),
        ("dil_conv_5x5", 3),
        ("sep_conv_3x3", 1),
        ("max_pool_3x3", 4),
        ("avg_pool_3x3", 1),
    )
    assert g.reduce == g.normal and g.normal_concat == (2, 3, 4, 5)
    assert Genotype.from_string(str(g.validate())) == g


def test_skip_cap_replaces_the_weakest_surplus_skips():
    skips = {0: "skip_connect", 1: "skip_connect", 3: "skip_connect", 4: "skip_connect"}
    scores = _scores(skips)
    uncapped = derive_genotype(scores, scores, skip_cap=None)
    assert sum(op == "skip_connect" for op, _ in uncapped.normal) == 4
    capped = derive_genotype(scores, scores, skip_cap=2)
    ops = [op for op, _ in capped.normal]
    assert ops.count("skip_connect") == 2
    # the two strongest skips (rows 4 and 3: node 1's inputs 2 and 1) stay; node 0's fall back to sep_conv
    # (a tie, listed by input index)
    assert capped.normal[:4] == (
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 2),
        ("skip_connect", 1),
    )
    assert sum(op == "skip_connect" for op, _ in capped.reduce) == 4  # the cap concerns the normal cell


def test_supernet_parameters_split_into_weights_and_architecture():
    net = Supernet(4, 10, 3, in_channels=1, k=2, generator=torch.Generator().manual_seed(0))
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert [tuple(p.shape) for p in arch] == [(EDGES, 8), (EDGES, 8), (EDGES,), (EDGES,)]
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert all(p.abs().max() < 0.01 for p in arch)  # 1e-3 N(0, 1), as the references initialise them
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert isinstance(net.genotype(), Genotype)


def test_halves_are_class_balanced_and_disjoint():
    labels = torch.tensor([0] * 6 + [1] * 4)  # class-sorted, as the CIFAR-10 JPEG copy is
    a, b = split_halves(labels)
    assert set(a.tolist()).isdisjoint(b.tolist()) and len(a) + len(b) == 10
    assert labels[a].bincount().tolist() == labels[b].bincount().tolist() == [3, 2]


# ---------------------------------------------------------------------------------------------- runs


def _config(out: Path, **changes) -> SearchConfig:
    base = dict(
        dataset="fashion-mnist",
        data_root=FMNIST,
        out=out,
        subset="balanced:20",
        epochs=2,
        batch_size=10,
        C=4,
        layers=3,
        partial=2,
        arch_warmup=0,
        progress=False,
    )
    return SearchConfig(**{**base, **changes})


@needs_fmnist
def test_search_smoke_run_then_the_derived_cell_trains_and_is_evaluated(tmp_path):
    """What CI runs (at most 2 minutes): robustarch search on a tiny supernet; the architecture weights move;
    robustarch train takes OUT/genotype.json; a study file evaluates the trained network."""
    from robustarch.cli import main
    from robustarch.evaluation import load_study, run_study

    t0 = time.perf_counter()
    out = tmp_path / "search"
    argv = [
        "search",
        "--dataset",
        "fashion-mnist",
        "--data-root",
        str(FMNIST),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--subset",
        "balanced:40",
        "--adversarial",
        "fgsm-rs",
        "--no-progress",
        *TINY,
    ]
    assert main(argv) == 0
    doc = json.loads((out / "genotype.json").read_text())
    genotype = load_genotype_file(out / "genotype.json")
    moved = max(
        (torch.tensor(doc["alphas"][k]) - torch.tensor(doc["alphas_init"][k])).abs().max().item()
        for k in doc["alphas"]
    )
    assert moved > 2e-3, moved  # Adam moves them ~6e-4 a step; their initial scale is 1e-3
    assert [h["arch_step"] for h in doc["history"]] == [True, True] and doc["search"][
        "adversarial"
    ] == "fgsm-rs"
    assert doc["history"][-1]["genotype"] == str(genotype)

    trained = tmp_path / "train"
    assert (
        main(
            [
                "train",
                "--model",
                "darts",
                "--dataset",
                "fashion-mnist",
                "--data-root",
                str(FMNIST),
                "--recipe",
                "fast-at",
                "--epochs",
                "1",
                "--batch-size",
                "20",
                "--train-subset",
                "balanced:100",
                "--check-images",
                "20",
                "--test-limit",
                "20",
                "--out",
                str(trained),
                "--no-progress",
                "--arch",
                f"genotype={out / 'genotype.json'}",
                "--arch",
                "C=4",
                "--arch",
                "layers=3",
            ]
        )
        == 0
    )
    model = zoo.load("darts", "fashion-mnist", weights=trained / "model.pt")  # loads without the file
    assert model.checkpoint_metadata["overrides"]["genotype"] == str(genotype)

    study = tmp_path / "study.toml"
    study.write_text(
        f'[study]\nname = "smoke"\nstore = "s.sqlite"\nbatch_size = 10\ndevice = "cpu"\nattacks = ["pgd"]\n\n'
        f'[[datasets]]\nname = "fashion-mnist"\nroot = "{FMNIST}"\nlimit = 10\n'
        f'models = [{{ name = "darts", id = "searched", weights = "{trained / "model.pt"}" }}]\n'
    )
    run_study(load_study(study), str(tmp_path / "s.sqlite"), progress=False)
    from robustarch.store import Store

    results = Store(str(tmp_path / "s.sqlite")).results(model="searched")
    assert sorted(r.attack for r in results) == ["clean", "pgd"] and all(
        r.n == 10 and r.complete for r in results
    )
    print(f"search smoke run: {time.perf_counter() - t0:.0f} s")


@needs_fmnist
def test_search_resumes_bit_exactly(tmp_path):
    straight = search(_config(tmp_path / "a"))
    first = Searcher(_config(tmp_path / "b", epochs=2), *init_distributed("cpu"))
    first.train_epoch()  # one epoch, checkpointed; a fresh searcher takes over
    torch.manual_seed(77)
    resumed = search(_config(tmp_path / "b"))
    a = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert str(straight.genotype) == str(resumed.genotype)
    assert [h["weight_loss"] for h in a["history"]] == [h["weight_loss"] for h in b["history"]]
    with pytest.raises(RobustarchError, match="different search"):
        Searcher(_config(tmp_path / "b", C=6), *init_distributed("cpu")).load()


@needs_fmnist
def test_data_parallel_search_equals_one_process(tmp_path):
    """torchrun with 2 gloo processes == 1 process with 2 micro-batches: the same shards, the same sums."""
    common = [
        "-m",
        "robustarch",
        "search",
        "--dataset",
        "fashion-mnist",
        "--data-root",
        str(FMNIST),
        "--epochs",
        "1",
        "--subset",
        "balanced:40",
        "--adversarial",
        "fgsm-rs",
        "--no-progress",
        *TINY,
    ]
    runs = {
        "two": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *common,
        ],
        "one": [sys.executable, *common, "--micro-batches", "2"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(
            [*cmd, "--out", str(tmp_path / name)], env=_env(), capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    one = torch.load(tmp_path / "one" / CHECKPOINT_NAME, weights_only=True)
    two = torch.load(tmp_path / "two" / CHECKPOINT_NAME, weights_only=True)
    assert one["run_key"]["world"] == 1 and two["run_key"]["world"] == 2
    compared = 0
    for k, v in one["model"].items():
        if "running_" in k or "num_batches_tracked" in k:
            continue  # each process's BatchNorm statistics follow its own shards (not used in train mode)
        assert torch.equal(v, two["model"][k]), k
        compared += 1
    assert compared > 50 and one["history"][0]["genotype"] == two["history"][0]["genotype"]
    assert one["history"][0]["weight_loss"] == pytest.approx(two["history"][0]["weight_loss"], rel=1e-12)


def test_bad_search_input_gets_clear_errors(tmp_path):
    from robustarch.cli import main

    with pytest.raises(RobustarchError, match="fgsm-rs"):
        _config(tmp_path, adversarial="fgsm").adversary()
    if (FMNIST / "train-images-idx3-ubyte.gz").exists():
        with pytest.raises(RobustarchError, match="equal shards"):
            Searcher(_config(tmp_path, batch_size=10, micro_batches=3), *init_distributed("cpu"))
        with pytest.raises(RobustarchError, match="larger --subset"):
            Searcher(_config(tmp_path, batch_size=16), *init_distributed("cpu"))
    with pytest.raises(RobustarchError, match="divisible"):
        Supernet(6, 10, 3, k=4)
    assert main(["search", "--dataset", "fashion-mnist", "--out", str(tmp_path), "--C", "0"]) == 2


def test_the_search_commands_do_not_import_torch_for_help():
    code = (
        "import sys; from robustarch.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
    for command in ("search", "compare"):
        proc = subprocess.run(
            [sys.executable, "-m", "robustarch", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0 and "usage: robustarch " + command in proc.stdout
