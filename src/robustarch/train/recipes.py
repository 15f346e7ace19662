"""Published training recipes, as data.

The study (Devaguptapu et al., 2020, Sec. 3) either used the authors' weights or trained models "from
scratch until we obtain the performance reported in the respective papers", i.e. with each paper's own
protocol. Every :class:`Recipe` below is one such protocol, with the script or paper it was read from.

Beyond the paper, three adversarial-training protocols (a recipe with ``adversarial`` set): ``pgd-at``
(Madry et al. 2018, MadryLab/cifar10_challenge ``config.json``), ``trades`` (Zhang et al. 2019,
yaodongyu/TRADES ``train_trades_cifar10.py``, beta 6) and ``fast-at`` (Wong et al. 2020,
locuslab/fast_adversarial ``CIFAR10/train_fgsm.py``: FGSM with a random start and a cyclic learning rate).
They also carry a per-epoch robustness check (``check``) that detects catastrophic overfitting
(:mod:`robustarch.train.overfitting`).

Known, deliberate deviations from the reference scripts (all negligible at the published epoch counts):

* The DARTS-family and NSGA-Net scripts call ``scheduler.step()`` at the *start* of every epoch (PyTorch <
  1.1 order), so their first epoch already runs at the second cosine value. We step schedules in the
  modern order: epoch ``e`` runs at the schedule's value for ``e``.
* Augmentation runs on batched tensors in ``[0, 1]`` pixel space (the model normalizes inside). Padding of
  the random crop is black (zeros), as torchvision pads the PIL image before ``ToTensor``; cutout fills
  with the normalization mean, which is what zeroing a *normalized* tensor (the reference ``Cutout``) means
  in pixel space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from robustarch.errors import UnknownNameError
from robustarch.train.adversarial import AdversarialTraining
from robustarch.train.overfitting import RobustnessCheck

Schedule = Literal["cosine", "warmup_cosine", "step", "linear_warmup_decay", "multistep", "cyclic"]


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, applied to whole batches of ``[0, 1]`` tensors."""

    crop_padding: int = 0  # random crop to the input size after zero padding by this many pixels
    hflip: bool = False  # horizontal flip with probability 1/2
    cutout: int = 0  # side of the square cut out of every image (DeVries & Taylor, 2017); 0 = off
    # RandomResizedCrop (Szegedy et al., 2015) as torchvision defines it; None = off
    resized_crop_scale: tuple[float, float] | None = None
    resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # ColorJitter factors (brightness, contrast, saturation, hue); None = off
    color_jitter: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Recipe:
    """One published training protocol. ``epochs`` and ``batch_size`` are the published values; the trainer
    can override them. ``batch_size`` is the *global* batch: under DDP each process takes an equal share."""

    name: str
    dataset_family: Literal["cifar", "imagenet"]
    source: str  # paper and reference script the numbers were read from
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: Schedule
    schedule_params: dict[str, float] = field(default_factory=dict)
    nesterov: bool = False
    augment: Augment = field(default_factory=Augment)
    aux_weight: float = 0.0  # weight of the auxiliary-head loss (Szegedy et al., 2015); 0 = no aux head
    drop_path: float = 0.0  # final drop-path / droprate, ramped linearly from 0: p * epoch / epochs
    grad_clip: float | None = None  # max global L2 norm of the gradient
    label_smoothing: float = 0.0
    # adversarial training: how training examples are perturbed (None = standard training) and the
    # per-epoch robustness check on held-out images that detects catastrophic overfitting
    adversarial: AdversarialTraining | None = None
    check: RobustnessCheck | None = None
    notes: str = ""

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def scaled_to_batch(self, batch_size: int) -> Recipe:
        """The recipe at another global batch size, with the learning rate scaled linearly (Goyal et al.,
        2017, "Accurate, Large Minibatch SGD"), so that e.g. DenseNAS's lr 0.5 at batch 1024 stays stable
        at a small batch."""
        return replace(self, batch_size=batch_size, lr=self.lr * batch_size / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        """Multiplier of ``lr`` as a function of the optimizer step (0-based), for ``LambdaLR``.

        Epoch-wise schedules use ``step // steps_per_epoch``, which gives exactly the learning rates of
        stepping the reference schedulers once per epoch.
        """
        epochs, p = self.epochs, self.schedule_params
        total = max(1, epochs * steps_per_epoch)
        if self.schedule == "cosine":  # CosineAnnealingLR(T_max=epochs, eta_min), stepped per epoch
            eta = p.get("eta_min", 0.0) / self.lr

            def factor(step: int) -> float:
                e = min(step // steps_per_epoch, epochs)
                return eta + (1 - eta) * (1 + math.cos(math.pi * e / epochs)) / 2

        elif self.schedule == "warmup_cosine":  # linear warmup then cosine, stepped per optimizer step
            warm = max(1, int(p.get("warmup_fraction", 0.3) * total))
            start = p.get("warmup_start_lr", 0.0) / self.lr
            eta = p.get("eta_min", 0.0) / self.lr

            def factor(step: int) -> float:
                if step < warm:
                    return start + (1 - start) * step / warm
                t = min(1.0, (step - warm) / max(1, total - warm))
                return eta + (1 - eta) * (1 + math.cos(math.pi * t)) / 2

        elif self.schedule == "step":  # StepLR(step_size, gamma), stepped per epoch
            size, gamma = int(p["step_size"]), p["gamma"]

            def factor(step: int) -> float:
                return gamma ** ((step // steps_per_epoch) // size)

        elif self.schedule == "linear_warmup_decay":
            # P-DARTS ImageNet: linear decay to 0 with a gentler slope over the last 5 epochs, and a linear
            # warmup over the first `warmup_epochs` epochs when the batch is larger than 256.
            warm = int(p.get("warmup_epochs", 0)) if self.batch_size > 256 else 0

            def factor(step: int) -> float:
                e = step // steps_per_epoch
                f = (epochs - 5 - e) / (epochs - 5) if epochs - e > 5 else (epochs - e) / ((epochs - 5) * 5)
                return f * (e + 1) / warm if e < warm else f

        elif self.schedule == "multistep":
            # MultiStepLR at fractions of the whole run, per optimizer step (Madry: x0.1 at 40k and 60k of
            # 80k steps; TRADES: x0.1 from epoch 75 of 76, 1-based)
            bounds = [math.floor(m * total + 1e-9) for m in p["milestones"]]
            gamma = p["gamma"]

            def factor(step: int) -> float:
                return gamma ** sum(step >= b for b in bounds)

        elif self.schedule == "cyclic":
            # torch's triangular CyclicLR from 0 up to lr over the first half of the steps and back to 0
            # (locuslab/fast_adversarial: step_size_up = step_size_down = lr_steps / 2)
            half = total / 2

            def factor(step: int) -> float:
                return max(0.0, 1.0 - abs(min(step, total) / half - 1.0))

        else:  # pragma: no cover - guarded by the Literal type and the recipe tests
            raise ValueError(f"unknown schedule {self.schedule!r}")
        return factor


_DARTS_PROTOCOL = dict(
    dataset_family="cifar",
    epochs=600,
    batch_size=96,
    lr=0.025,
    momentum=0.9,
    weight_decay=3e-4,
    schedule="cosine",
    schedule_params={"eta_min": 0.0},
    augment=Augment(crop_padding=4, hflip=True, cutout=16),
    aux_weight=0.4,
    drop_path=0.2,
    grad_clip=5.0,
)

_IMAGENET_AUG = Augment(hflip=True, resized_crop_scale=(0.08, 1.0))

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="handcrafted-cifar",
            dataset_family="cifar",
            source="huyvnphan/PyTorch_CIFAR10 (train.py, module.py, schduler.py, data.py): the recipe of "
            "the CIFAR-10 VGG/ResNet/DenseNet weights the study compares against",
            epochs=100,
            batch_size=256,
            lr=1e-2,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-2,
            schedule="warmup_cosine",
            schedule_params={"warmup_fraction": 0.3, "warmup_start_lr": 1e-8, "eta_min": 1e-8},
            augment=Augment(crop_padding=4, hflip=True),
            notes="warmup over the first 30% of optimizer steps, then cosine; per-step schedule",
        ),
        Recipe(
            name="sgd-cosine-cifar",
            dataset_family="cifar",
            source="kuangliu/pytorch-cifar main.py: the common handcrafted CIFAR baseline",
            epochs=200,
            batch_size=128,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="cosine",
            augment=Augment(crop_padding=4, hflip=True),
        ),
        Recipe(
            name="darts-cifar",
            source="Liu et al., DARTS (ICLR 2019), Sec. A.1.2; quark0/darts cnn/train.py "
            "(--auxiliary --cutout)",
            **_DARTS_PROTOCOL,
        ),
        Recipe(
            name="pdarts-cifar",
            source="Chen et al., P-DARTS (ICCV 2019); chenxin061/pdarts train_cifar.py "
            "(--auxiliary --cutout)",
            **{**_DARTS_PROTOCOL, "batch_size": 128, "drop_path": 0.3},
        ),
        Recipe(
            name="pcdarts-cifar",
            source="Xu et al., PC-DARTS (ICLR 2020); yuhuixu1993/PC-DARTS train.py (--auxiliary --cutout)",
            **{**_DARTS_PROTOCOL, "drop_path": 0.3},
        ),
        Recipe(
            name="nsganet-cifar",
            source="Lu et al., NSGA-Net (GECCO 2019); ianwhale/nsga-net validation/train.py with the "
            "README's command (--cutout --auxiliary --batch_size 96 --droprate 0.2 --epochs 600)",
            **_DARTS_PROTOCOL,
            notes="NSGA-Net ramps its `droprate` attribute the way DARTS ramps `drop_path_prob`",
        ),
        Recipe(
            name="darts-imagenet",
            dataset_family="imagenet",
            source="Liu et al., DARTS (ICLR 2019), Sec. A.1.3; quark0/darts cnn/train_imagenet.py",
            epochs=250,
            batch_size=128,
            lr=0.1,
            momentum=0.9,
            weight_decay=3e-5,
            schedule="step",
            schedule_params={"step_size": 1, "gamma": 0.97},
            augment=replace(_IMAGENET_AUG, color_jitter=(0.4, 0.4, 0.4, 0.2)),
            aux_weight=0.4,
            grad_clip=5.0,
            label_smoothing=0.1,
        ),
        Recipe(
            name="pdarts-imagenet",
            dataset_family="imagenet",
            source="Chen et al., P-DARTS (ICCV 2019), Sec. 4.3; chenxin061/pdarts train_imagenet.py "
            "(also used by PC-DARTS)",
            epochs=250,
            batch_size=1024,
            lr=0.5,
            momentum=0.9,
            weight_decay=3e-5,
            schedule="linear_warmup_decay",
            schedule_params={"warmup_epochs": 5},
            augment=replace(_IMAGENET_AUG, color_jitter=(0.4, 0.4, 0.4, 0.2)),
            aux_weight=0.4,
            grad_clip=5.0,
            label_smoothing=0.1,
        ),
        Recipe(
            name="densenas-imagenet",
            dataset_family="imagenet",
            source="Fang et al., DenseNAS (CVPR 2020); JaminFong/DenseNAS configs/imagenet_train_cfg.py",
            epochs=240,
            batch_size=1024,
            lr=0.5,
            momentum=0.9,
            weight_decay=4e-5,
            schedule="cosine",
            schedule_params={"eta_min": 1e-5},
            augment=_IMAGENET_AUG,
            label_smoothing=0.1,
        ),
        Recipe(
            name="torchvision-imagenet",
            dataset_family="imagenet",
            source="torchvision references/classification (the recipe of torchvision's VGG/ResNet/DenseNet "
            "ImageNet weights): 8 GPUs x 32 images, lr 0.1 (0.01 for VGG), step 30 epochs x 0.1",
            epochs=90,
            batch_size=256,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            schedule="step",
            schedule_params={"step_size": 30, "gamma": 0.1},
            augment=_IMAGENET_AUG,
            notes="torchvision trains VGG with lr 0.01: use --lr 0.01 for vgg*",
        ),
    )
}

_CROP_FLIP = Augment(crop_padding=4, hflip=True)

ADVERSARIAL_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="pgd-at",
        dataset_family="cifar",
        source="Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks (ICLR 2018); "
        "MadryLab/cifar10_challenge config.json (80,000 steps of 128 = 205 epochs, lr 0.1 x0.1 at 40k and "
        "60k, wd 2e-4; PGD-10, 8/255, step 2/255, random start) and cifar10_input.py (pad 2, crop, flip)",
        epochs=205,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        weight_decay=2e-4,
        schedule="multistep",
        schedule_params={"milestones": (0.5, 0.75), "gamma": 0.1},
        augment=Augment(crop_padding=2, hflip=True),
        adversarial=AdversarialTraining("pgd", eps=8 / 255, alpha=2 / 255, steps=10, bn_mode="train"),
        check=RobustnessCheck(action="flag"),
        notes="the attack runs on the network in training mode, as the reference's TensorFlow graph does",
    ),
    Recipe(
        name="trades",
        dataset_family="cifar",
        source="Zhang et al., Theoretically Principled Trade-off between Robustness and Accuracy (ICML "
        "2019); yaodongyu/TRADES train_trades_cifar10.py and trades.py (76 epochs, lr 0.1 x0.1 from epoch "
        "75, wd 2e-4, eps 0.031, 10 steps of 0.007 from x + N(0, 0.001^2), beta 6, eval-mode attack)",
        epochs=76,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        weight_decay=2e-4,
        schedule="multistep",
        schedule_params={"milestones": (74 / 76,), "gamma": 0.1},
        augment=_CROP_FLIP,
        adversarial=AdversarialTraining(
            "trades",
            eps=0.031,
            alpha=0.007,
            steps=10,
            start="normal",
            start_std=0.001,
            beta=6.0,
            bn_mode="eval",
        ),
        check=RobustnessCheck(action="flag"),
    ),
    Recipe(
        name="fast-at",
        dataset_family="cifar",
        source="Wong, Rice, Kolter, Fast is better than free: Revisiting adversarial training (ICLR 2020); "
        "locuslab/fast_adversarial CIFAR10/train_fgsm.py (15 epochs, cyclic lr 0 -> 0.2 -> 0, wd 5e-4, "
        "FGSM 8/255 with step 10/255 from a uniform start, --early-stop: PGD accuracy falling by > 0.2)",
        epochs=15,
        batch_size=128,
        lr=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cyclic",
        augment=_CROP_FLIP,
        adversarial=AdversarialTraining("fgsm-rs", eps=8 / 255, alpha=10 / 255, steps=1, bn_mode="train"),
        check=RobustnessCheck(action="stop"),
        notes="the early-stop check runs on held-out training images (the reference: its first batch)",
    ),
)
RECIPES.update({r.name: r for r in ADVERSARIAL_RECIPES})

# Which recipe a model trains with by default: by the spec's `method`, per dataset family.
_DEFAULTS: dict[tuple[str, str], str] = {
    ("DARTS", "cifar"): "darts-cifar",
    ("P-DARTS", "cifar"): "pdarts-cifar",
    ("PC-DARTS", "cifar"): "pcdarts-cifar",
    ("NSGA-Net", "cifar"): "nsganet-cifar",
    ("DARTS", "imagenet"): "darts-imagenet",
    ("P-DARTS", "imagenet"): "pdarts-imagenet",
    ("PC-DARTS", "imagenet"): "pdarts-imagenet",
    ("DenseNAS", "imagenet"): "densenas-imagenet",
    # cells from robust architecture search: their authors train them adversarially (AdvRush's
    # adv_train.py: PGD-7 adversarial training, which is also how it trains RACL's cell)
    ("AdvRush", "cifar"): "pgd-at",
    ("RACL", "cifar"): "pgd-at",
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownNameError("recipe", name, RECIPES) from None


def default_recipe(method: str, family: str, dataset_family: str) -> Recipe:
    """The published recipe for a model of this method (spec.method), family (handcrafted|nas) and dataset
    family; handcrafted networks use the handcrafted recipe of their dataset family."""
    key = (method, dataset_family)
    if key in _DEFAULTS:
        return RECIPES[_DEFAULTS[key]]
    if family == "nas":  # a NAS cell network without its own entry: the DARTS evaluation protocol
        return RECIPES["darts-cifar" if dataset_family == "cifar" else "darts-imagenet"]
    return RECIPES["handcrafted-cifar" if dataset_family == "cifar" else "torchvision-imagenet"]
