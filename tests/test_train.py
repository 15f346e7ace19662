"""Training: recipes, augmentation, loss goes down for every family, exact resume, checkpoints that
robustarch.zoo.load reads strictly, and DDP (gloo, 2 processes) matching one process."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from robustarch import zoo
from robustarch.cli.train import parse_arch
from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.train import RECIPES, Augment, Trainer, default_recipe, get_recipe
from robustarch.train.augment import augment_batch
from robustarch.train.trainer import CHECKPOINT_NAME, dataset_hash

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def one_thread():
    """The networks here are tiny: one intra-op thread is as fast, and far faster on a busy machine, where
    OpenMP threads of many small ops wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_overrides(spec: zoo.ModelSpec) -> dict:
    """The smallest sensible variant of a registered network, from its builder's arguments."""
    params = inspect.signature(spec.builder).parameters
    if "C" in params:  # DARTS-family and NSGA-Net cell networks
        return {"C": 4, "layers": 3}
    if "hidden" in params:  # VGG
        return {"width": 8, "hidden": 32}
    if "block_config" in params:  # DenseNet
        return {"width": 4, "block_config": (1, 1, 1, 1)}
    if "layers" in params and "width" in params:  # ResNet
        return {"width": 8, "layers": (1, 1, 1, 1)}
    return {}


def one_spec_per_family() -> list[zoo.ModelSpec]:
    """One study model per (network family file, dataset family, standard or adversarial default recipe):
    every code path that builds a network, and every kind of training its default recipe runs (the robust-NAS
    cells train adversarially). Entries that need a user-supplied config (the generic DenseNAS entry) are not
    candidates."""
    seen, out = set(), []
    for spec in zoo.list_specs(variants=False):
        adversarial = default_recipe(spec.method, spec.family, spec.dataset_family).adversarial is not None
        key = (spec.builder.__module__, spec.dataset_family, adversarial)
        params = inspect.signature(spec.builder).parameters
        needs_config = "net_config" in params and "net_config" not in spec.arch_kwargs("imagenet")
        if key not in seen and not needs_config:
            seen.add(key)
            out.append(spec)
    return out


@pytest.fixture(scope="module")
def fmnist_train():
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    from robustarch import data

    return data.load("fashion-mnist", FMNIST, split="train", limit=64)[0]


# ------------------------------------------------------------------------------------------------ recipes


def test_recipes_hold_the_published_numbers():
    darts = get_recipe("darts-cifar")
    assert (darts.epochs, darts.batch_size, darts.lr, darts.weight_decay, darts.momentum) == (
        600, 96, 0.025, 3e-4, 0.9,
    )  # fmt: skip
    assert (darts.augment.cutout, darts.aux_weight, darts.drop_path, darts.grad_clip) == (16, 0.4, 0.2, 5.0)
    assert darts.schedule == "cosine"
    nsga = get_recipe("nsganet-cifar")
    assert (nsga.batch_size, nsga.lr, nsga.drop_path, nsga.augment.cutout, nsga.aux_weight) == (
        96,
        0.025,
        0.2,
        16,
        0.4,
    )
    hand = get_recipe("handcrafted-cifar")
    assert (hand.momentum, hand.nesterov, hand.augment.crop_padding, hand.augment.hflip) == (
        0.9,
        True,
        4,
        True,
    )
    imnet = get_recipe("darts-imagenet")
    assert (imnet.label_smoothing, imnet.lr, imnet.epochs, imnet.schedule_params["gamma"]) == (
        0.1,
        0.1,
        250,
        0.97,
    )
    with pytest.raises(UnknownNameError, match="darts-cifar"):
        get_recipe("darts-cifr")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_schedules(name):
    r = RECIPES[name]
    f = r.lr_factor(steps_per_epoch=2)
    values = [f(s) for s in range(2 * r.epochs)]
    assert all(0 <= v <= 1 + 1e-12 for v in values)
    # peaks at the base lr (P-DARTS ImageNet: its warmup ends where the linear decay has begun)
    assert max(values) == pytest.approx(1.0, abs=0.02)
    # every published schedule decays over its published length (TRADES: x0.1 for its last 2 of 76 epochs;
    # the cyclic one reaches 0 one step after the last)
    assert values[-1] < {"trades": 0.11, "fast-at": 2.01 / len(values)}.get(r.name, 0.05)
    if r.schedule == "cosine":  # per-epoch values: constant within an epoch, cos between epochs
        assert values[0] == values[1] == 1.0
        eta = r.schedule_params.get("eta_min", 0) / r.lr
        assert values[2] == pytest.approx(eta + (1 - eta) * (1 + math.cos(math.pi / r.epochs)) / 2)
    if r.schedule == "warmup_cosine":  # linear warmup over the first 30% of the steps
        warm = int(0.3 * len(values))
        assert values[0] < 1e-3 and values[warm // 2] == pytest.approx(0.5, abs=0.01)
    if r.schedule == "step":
        size, gamma = r.schedule_params["step_size"], r.schedule_params["gamma"]
        assert values[2 * size] == pytest.approx(gamma) and values[2 * size - 1] == 1.0
    if r.schedule in ("multistep", "cyclic"):  # per-step schedules, against torch's own schedulers
        assert values == pytest.approx(_torch_schedule(r, steps_per_epoch=2), abs=1e-9)


def _torch_schedule(r, steps_per_epoch):
    """The learning-rate factors torch's MultiStepLR / CyclicLR give, stepped once per optimizer step (the
    references: MadryLab's step_size_schedule and TRADES' adjust_learning_rate are multi-step, Wong's
    train_fgsm.py uses CyclicLR with step_size_up = step_size_down = lr_steps / 2)."""
    total = r.epochs * steps_per_epoch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
    if r.schedule == "multistep":
        # a milestone at a fraction of the run falls on the step floor(fraction * total), as recipes.py says
        milestones = [math.floor(m * total + 1e-9) for m in r.schedule_params["milestones"]]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=r.schedule_params["gamma"])
    else:
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt,
            base_lr=0.0,
            max_lr=1.0,
            step_size_up=total / 2,
            step_size_down=total / 2,
            cycle_momentum=False,
        )
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_adversarial_recipes_hold_the_published_numbers():
    pgd, trades, fast = get_recipe("pgd-at"), get_recipe("trades"), get_recipe("fast-at")
    # MadryLab config.json: 80,000 steps of 128 (205 epochs), lr 0.1/0.01/0.001, wd 2e-4, PGD-10 2/255
    assert (pgd.epochs, pgd.batch_size, pgd.lr, pgd.weight_decay, pgd.augment.crop_padding) == (
        205, 128, 0.1, 2e-4, 2,
    )  # fmt: skip
    assert (pgd.adversarial.steps, pgd.adversarial.alpha, pgd.adversarial.start) == (10, 2 / 255, "uniform")
    assert pgd.adversarial.bn_mode == "train" and pgd.schedule_params["milestones"] == (0.5, 0.75)
    # TRADES train_trades_cifar10.py / trades.py: 76 epochs, eps 0.031, 10 x 0.007, beta 6, eval-mode attack
    a = trades.adversarial
    assert (trades.epochs, trades.lr, trades.weight_decay) == (76, 0.1, 2e-4)
    assert (a.method, a.eps, a.alpha, a.steps, a.beta, a.start, a.start_std, a.bn_mode) == (
        "trades", 0.031, 0.007, 10, 6.0, "normal", 0.001, "eval",
    )  # fmt: skip
    # Wong et al. train_fgsm.py: 15 epochs, cyclic 0 -> 0.2, wd 5e-4, eps 8/255, alpha 10/255, early stop
    a = fast.adversarial
    assert (fast.epochs, fast.lr, fast.weight_decay, fast.schedule) == (15, 0.2, 5e-4, "cyclic")
    assert (a.method, a.eps, a.alpha, a.steps, a.start) == ("fgsm-rs", 8 / 255, 10 / 255, 1, "uniform")
    assert fast.check.action == "stop" and fast.check.drop == 0.2
    assert pgd.check.action == trades.check.action == "flag"


@pytest.mark.parametrize("spec", zoo.list_specs(), ids=lambda s: f"{s.name}-{s.dataset_family}")
def test_every_model_has_a_published_default_recipe(spec):
    r = default_recipe(spec.method, spec.family, spec.dataset_family)
    assert r.dataset_family == spec.dataset_family
    if spec.family == "nas" and spec.dataset_family == "cifar" and r.adversarial is None:
        assert r.aux_weight == 0.4 and r.augment.cutout == 16
        assert "auxiliary" in inspect.signature(spec.builder).parameters
    if spec.method in ("AdvRush", "RACL"):  # their authors train them adversarially
        assert r.adversarial is not None


# ------------------------------------------------------------------------------------------- augmentation


def test_augment_crop_flip_cutout_semantics():
    x = torch.rand(64, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, Augment(crop_padding=4, hflip=True), gen, fill=[0.5, 0.5, 0.5])
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # every output is a (possibly flipped) shifted window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            for img in (padded[i, :, dy : dy + 32, dx : dx + 32],)
            if torch.equal(img, out[i]) or torch.equal(img.flip(2), out[i])
        ]
        assert hits, f"example {i} is not a crop of the padded input"
    cut = augment_batch(x, Augment(cutout=16), torch.Generator().manual_seed(1), fill=[0.25, 0.5, 0.75])
    changed = (cut != x).any(1)  # (N, H, W)
    for i in range(64):
        rows, cols = changed[i].any(1).nonzero(), changed[i].any(0).nonzero()
        assert len(rows) <= 16 and len(cols) <= 16  # a clipped 16x16 square
        assert torch.allclose(cut[i, :, rows[0], cols[0]].flatten(), torch.tensor([0.25, 0.5, 0.75]))


def test_augment_draws_are_the_same_for_one_or_two_processes():
    """Rank r of W gets rows r::W of the global batch, as DistributedSampler hands them out."""
    aug = Augment(crop_padding=4, hflip=True, cutout=8)
    x = torch.rand(12, 1, 28, 28)
    whole = augment_batch(x, aug, torch.Generator().manual_seed(3), fill=[0.3])
    for rank in range(2):
        part = augment_batch(
            x[rank::2], aug, torch.Generator().manual_seed(3), fill=[0.3], rank=rank, world=2
        )
        assert torch.equal(part, whole[rank::2])


def test_imagenet_augmentations_keep_shape_range_and_identity_limits():
    x = torch.rand(6, 3, 40, 40)
    aug = Augment(hflip=True, resized_crop_scale=(0.08, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.2))
    out = augment_batch(x, aug, torch.Generator().manual_seed(0), fill=[0, 0, 0])
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    same = Augment(resized_crop_scale=(1.0, 1.0), resized_crop_ratio=(1.0, 1.0), color_jitter=(0, 0, 0, 0))
    out = augment_batch(x, same, torch.Generator().manual_seed(0), fill=[0, 0, 0])
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------- training


@needs_fmnist
@pytest.mark.parametrize("spec", one_spec_per_family(), ids=lambda s: f"{s.name}-{s.dataset_family}")
def test_a_few_steps_lower_the_loss(spec, fmnist_train, tmp_path):
    """Every network family, with its own published recipe, fits a batch of real images."""
    if spec.dataset_family == "cifar":
        dataset, images = "fashion-mnist", fmnist_train
    else:  # ImageNet-family networks: the same images upsampled to 3 x 224 x 224
        dataset, images = "imagenet", _gray_to_rgb(fmnist_train)
    n = 16 if spec.dataset_family == "cifar" else 8  # 224 x 224 inputs cost ~50x more
    subset = torch.utils.data.Subset(images, range(n))
    x = torch.stack([subset[i][0] for i in range(n)])
    y = torch.tensor([subset[i][1] for i in range(n)])
    arch = {**tiny_overrides(spec), "num_classes": 10}
    torch.manual_seed(0)
    model = zoo.load(spec.name, dataset, **arch).train()
    # the model's own recipe (augmentation, auxiliary loss, drop path, clipping, schedule shape) at one
    # learning rate that moves every tiny network within 8 steps of a batch of 16 (or 8)
    recipe = default_recipe(spec.method, spec.family, spec.dataset_family)
    recipe = recipe.with_overrides(epochs=8, batch_size=n, lr=0.05)
    trainer = Trainer(model, subset, recipe, out=tmp_path, progress=False)

    def loss() -> float:
        for attr in ("drop_path_prob", "droprate"):
            if hasattr(trainer.net, attr):
                setattr(trainer.net, attr, 0.0)
        torch.manual_seed(1)  # the same dropout masks before and after
        with torch.no_grad():
            out = model(x)
        return torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y).item()

    before = loss()
    trainer.fit()
    after = loss()
    assert math.isfinite(after) and after < before - 0.01, (before, after)
    assert len(trainer.history) == 8 and (tmp_path / CHECKPOINT_NAME).exists()


def _gray_to_rgb(ds):
    class RGB(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            img, label = ds[i]
            big = torch.nn.functional.interpolate(img[None], size=224, mode="bilinear", align_corners=False)
            return big[0].clamp(0, 1).expand(3, -1, -1).clone(), label

    return RGB()


@needs_fmnist
def test_resume_continues_bit_exactly(fmnist_train, tmp_path):
    """Two epochs straight == one epoch, a fresh process-like restart from the checkpoint, one more epoch.
    DARTS exercises every source of randomness: shuffling, crop/flip/cutout, drop path, auxiliary head."""
    recipe = get_recipe("darts-cifar").with_overrides(epochs=2, batch_size=16)

    def fresh(out: Path) -> Trainer:
        torch.manual_seed(0)
        model = zoo.load("darts", "fashion-mnist", C=4, layers=3).train()
        return Trainer(model, fmnist_train, recipe, out=out, seed=5, progress=False)

    straight = fresh(tmp_path / "a")
    straight.fit()
    first = fresh(tmp_path / "b")
    first.train_epoch()
    torch.manual_seed(123)  # whatever the global RNG holds now must not matter after a resume
    resumed = fresh(tmp_path / "b")
    assert resumed.load_checkpoint() and resumed.epoch == 1
    resumed.fit()
    assert resumed.net.drop_path_prob > 0
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)
    assert straight.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]
    # a checkpoint of another run is refused, not silently mixed in
    other = Trainer(zoo.load("darts", "fashion-mnist", C=4, layers=3), fmnist_train,
                    recipe.with_overrides(lr=0.1), out=tmp_path / "b", progress=False)  # fmt: skip
    with pytest.raises(RobustarchError, match="different run"):
        other.load_checkpoint()


@needs_fmnist
@pytest.mark.parametrize(
    ("model", "arch"),
    [("resnet18", ["width=8", "layers=[1,1,1,1]"]), ("nsga_net", ["C=4", "layers=3"])],
)
def test_train_cli_saves_a_checkpoint_zoo_load_reads_strictly(model, arch, tmp_path):
    from robustarch.cli import main

    out = tmp_path / model
    argv = [
        "train",
        "--model",
        model,
        "--dataset",
        "fashion-mnist",
        "--data-root",
        str(FMNIST),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-limit",
        "64",
        "--test-limit",
        "100",
        "--out",
        str(out),
        "--no-progress",
    ]
    for a in arch:
        argv += ["--arch", a]
    assert main(argv) == 0
    summary = json.loads((out / "train.json").read_text())
    loaded = zoo.load(model, "fashion-mnist", weights=out / "model.pt")  # strict; overrides from metadata
    meta = loaded.checkpoint_metadata
    assert meta["recipe"] == summary["recipe"] == default_recipe(
        loaded.spec.method, loaded.spec.family, "cifar"
    ).name  # fmt: skip
    assert meta["epochs"] == 1 and meta["n_test"] == 100 and meta["overrides"] == parse_arch(arch) | (
        {"auxiliary": True} if loaded.spec.family == "nas" else {}
    )  # fmt: skip
    from robustarch import data

    train_set, _ = data.load("fashion-mnist", FMNIST, split="train", limit=64)
    assert meta["data_hash"] == dataset_hash(train_set)
    # the reloaded network reproduces the accuracy recorded at the end of training
    test_set, _ = data.load("fashion-mnist", FMNIST, split="test", limit=100)
    x = torch.stack([test_set[i][0] for i in range(100)])
    y = torch.tensor([test_set[i][1] for i in range(100)])
    with torch.no_grad():
        acc = (loaded(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(meta["clean_accuracy"])
    # running the finished command again resumes at the end and trains nothing more
    assert main(argv) == 0
    assert json.loads((out / "train.json").read_text())["history"] == summary["history"]


def test_bad_input_gets_clear_errors(tmp_path):
    from robustarch.cli import main

    with pytest.raises(RobustarchError, match="KEY=VALUE"):
        parse_arch(["C16"])
    assert parse_arch(["C=16", "layers=[1,2]", "genotype=DARTS_V2"]) == {
        "C": 16, "layers": [1, 2], "genotype": "DARTS_V2",
    }  # fmt: skip
    assert main(["train", "--model", "resnet18", "--dataset", "cifar10"]) == 2  # --out missing
    assert main(["train", "--list-recipes"]) == 0
    with pytest.raises(RobustarchError, match="split evenly"):
        Trainer(torch.nn.Linear(1, 1), [(torch.zeros(1), 0)], get_recipe("darts-cifar"), out=tmp_path,
                dist_info=_two_ranks())  # fmt: skip


def _two_ranks():
    from robustarch.train.trainer import _Dist

    return _Dist(world=5, rank=0)  # the recipe's global batch of 96 does not split 5 ways


def test_list_recipes_lists_every_recipe(capsys):
    from robustarch.cli import main

    assert main(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")}
    assert listed == set(RECIPES)
    assert "FGSM-RS (8/255, step 10/255" in out and "on overfit: stop" in out
