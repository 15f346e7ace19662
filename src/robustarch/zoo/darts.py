"""DARTS, P-DARTS and PC-DARTS evaluation networks: one cell, two macro skeletons (CIFAR and ImageNet).

* DARTS: Liu, Simonyan, Yang, ICLR 2019; reference ``quark0/darts`` ``cnn/model.py``.
* P-DARTS: Chen, Xie, Wu, Tian, ICCV 2019; reference ``chenxin061/pdarts`` ``model.py``.
* PC-DARTS: Xu et al., ICLR 2020; reference ``yuhuixu1993/PC-DARTS`` ``model.py``.
* Cells from robust architecture search, in the same CIFAR network (their authors evaluate them in a copy of
  DARTS' ``NetworkCIFAR``): AdvRush (Mok et al., ICCV 2021; ``nutellamok/advrush`` ``eval/model.py``), RACL
  (Dong et al. 2020; its cell as AdvRush's code carries it) and E2RNAS (Yue et al., IJCNN 2022;
  ``yuezhixiong/NAS-Benchmark`` ``DARTS/model.py``). ABanditNAS (Chen et al., ECCV 2020) searched another cell
  space and is not a DARTS network (see ``genotypes.get_genotype("ABanditNAS")``).

The three repositories share the cell, the CIFAR network and the CIFAR auxiliary head. The one structural
difference is the ImageNet auxiliary head: P-DARTS keeps a BatchNorm after its 768-channel conv, DARTS and
PC-DARTS comment it out ("for consistency with the paper"). Module names and order mirror the references, so
``state_dict()`` keys equal theirs and the authors' checkpoints load strictly.

Forward contract: in eval mode a network returns one logits tensor; in training mode with ``auxiliary=True``
it returns ``(logits, logits_aux)`` (the auxiliary tower's loss is what the published training used).
``drop_path_prob`` is read in training only, as in the references.
"""

from __future__ import annotations

import torch
from torch import nn

from robustarch.errors import RobustarchError
from robustarch.zoo._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    cifar_normalization,
    register_model,
)
from robustarch.zoo.genotypes import CITATIONS, Genotype, as_genotype, genotype_citation
from robustarch.zoo.operations import OPS, FactorizedReduce, Identity, ReLUConvBN, drop_path

# Mean/std of the authors' training code (DARTS-family utils._data_transforms_cifar10 / _cifar100).
CIFAR10_MEAN_STD = ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768))
# The study evaluated every CIFAR-100 NAS checkpoint with these (cifar/*-nas.py --cifar100).
CIFAR100_MEAN_STD = (
    (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
)
# per dataset: CIFAR-10 (and its JPEG copy) as the authors trained, CIFAR-100 as the study evaluated,
# Fashion-MNIST its own statistics (no published weights)
NAS_CIFAR_NORMALIZATION = {**cifar_normalization(CIFAR10_MEAN_STD), "cifar100": CIFAR100_MEAN_STD}


class SELayer(nn.Module):
    """Squeeze-and-excitation on a cell's output (NSGA-Net ``SE=True``): global average pool,
    Linear(c, c // reduction, no bias), ReLU, Linear back, sigmoid, channel-wise scaling."""

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weight = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * weight


class Cell(nn.Module):
    """A discrete cell built from a genotype: two preprocessed inputs, ``steps`` nodes each summing two
    op outputs, the concat of the listed states (optionally squeeze-excited) as output.

    In a reduction cell only the edges reading the cell inputs (index 0 or 1) are strided. ``preprocess0``
    is a FactorizedReduce when the previous cell reduced, since ``s0`` then has twice its resolution.
    """

    def __init__(
        self,
        genotype: Genotype,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        se: bool = False,
    ):
        super().__init__()
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)

        edges = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self._steps = len(edges) // 2
        self.multiplier = len(self._concat)
        self._indices = [index for _, index in edges]
        self._ops = nn.ModuleList(
            OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in edges
        )
        if se:
            self.se_layer = SELayer(self.multiplier * C)
        else:
            self.se_layer = None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            branches = []
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                # identity edges are never dropped (reference behaviour)
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                branches.append(h)
            states.append(branches[0] + branches[1])
        out = torch.cat([states[i] for i in self._concat], dim=1)
        return out if self.se_layer is None else self.se_layer(out)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 map after cell ``2*layers//3`` (all four repositories)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 14x14 map. ``bn_after_768`` is True only for P-DARTS; DARTS and
    PC-DARTS trained without that BatchNorm, which shifts the index of the last ReLU."""

    def __init__(self, C: int, num_classes: int, bn_after_768: bool = False):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if bn_after_768:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _check_layers(layers: int) -> None:
    if layers < 3:
        raise RobustarchError(f"a DARTS-style network needs layers >= 3 (two reduction cells), got {layers}")


def stack_cells(
    genotype: Genotype,
    C_prev_prev: int,
    C_prev: int,
    C: int,
    layers: int,
    *,
    reduction_prev: bool,
    double_at_reduction: bool = True,
    increment: int = 0,
    se: bool = False,
) -> tuple[nn.ModuleList, int, int]:
    """The cell stack shared by the DARTS-family networks and NSGA-Net's pyramid network.

    Reductions sit at cells ``layers//3`` and ``2*layers//3``. DARTS doubles the width there; NSGA-Net
    instead grows it by ``increment`` after every cell. Returns the cells, the channel count of the last
    cell's output and of cell ``2*layers//3`` (which feeds the auxiliary head).
    """
    cells = nn.ModuleList()
    C_curr, C_to_auxiliary = C, C_prev
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction and double_at_reduction:
            C_curr *= 2
        cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, se=se)
        reduction_prev = reduction
        cells.append(cell)
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        if i == 2 * layers // 3:
            C_to_auxiliary = C_prev
        C_curr += increment
    return cells, C_prev, C_to_auxiliary


class _CellNetwork(nn.Module):
    """Shared forward of the cell stacks: run the cells, tap the auxiliary head after cell 2*layers//3."""

    _layers: int
    _auxiliary: bool
    _final_map: tuple[int, int] | None = None  # spatial size the classifier's pooling requires, if fixed
    cells: nn.ModuleList
    global_pooling: nn.Module
    classifier: nn.Linear

    def _drop_prob(self) -> float:
        return float(getattr(self, "drop_path_prob", 0.0))

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits_aux = None
        s0, s1 = self._stem(x)
        drop_prob = self._drop_prob()
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        if self._final_map is not None and tuple(s1.shape[-2:]) != self._final_map:
            # the fixed AvgPool2d(7) would silently pool only a corner of a larger map
            raise RobustarchError(
                f"{type(self).__name__} needs 224x224 inputs (the final map must be 7x7 for its fixed "
                f"AvgPool2d(7)); got {tuple(x.shape[-2:])} inputs and a {tuple(s1.shape[-2:])} map"
            )
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        if logits_aux is not None:
            return logits, logits_aux
        return logits


class NetworkCIFAR(_CellNetwork):
    """DARTS-family CIFAR network: conv3x3 + BN stem with ``3*C`` channels, ``layers`` cells with
    reductions (channel doubling) at ``layers//3`` and ``2*layers//3``, adaptive average pooling, Linear."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | str,
        in_channels: int = 3,
    ):
        super().__init__()
        _check_layers(layers)
        genotype = as_genotype(genotype)
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0

        C_curr = 3 * C  # stem multiplier
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        self.cells, C_prev, C_to_auxiliary = stack_cells(
            genotype, C_curr, C_curr, C, layers, reduction_prev=False
        )
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_CellNetwork):
    """DARTS-family ImageNet (mobile setting) network: two stride-2 stems (56x56 and 28x28 maps), the
    first cell preprocessing ``s0`` with a FactorizedReduce, and a fixed ``AvgPool2d(7)`` before the
    classifier, so the input must be 224x224 as in the references."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | str,
        in_channels: int = 3,
        aux_head_bn: bool = False,
    ):
        super().__init__()
        _check_layers(layers)
        genotype = as_genotype(genotype)
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0

        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # the first cell reads stem0 (56x56) and stem1 (28x28): built as if the previous cell reduced
        self.cells, C_prev, C_to_auxiliary = stack_cells(genotype, C, C, C, layers, reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_to_auxiliary, num_classes, bn_after_768=aux_head_bn)
        self.global_pooling = nn.AvgPool2d(7)
        self._final_map = (7, 7)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


# --------------------------------------------------------------------------------------------------
# Registry entries, generated from one table.

_METHODS: dict[str, dict] = {
    "darts": {
        "method": "DARTS",
        "paper": CITATIONS["DARTS_V2"],
        "repo": "quark0/darts@f276dd346a09ae3160f8e3aca5c7b193fda1da37",
        "file": "cnn/model.py",
        "genotype": {"cifar": "DARTS_V2", "imagenet": "DARTS_V2"},
        "aux_head_bn": False,
        "weights": {
            "cifar": "CIFAR-10: authors' cifar10_model.pt (quark0/darts README, Google Drive); "
            "CIFAR-10 and CIFAR-100 as used by the study: tdchaitanya/nas-robustness README "
            "(Google Drive, darts/pretrained)",
            "imagenet": "authors' imagenet_model.pt (quark0/darts README, Google Drive); "
            "also the study's Drive",
        },
        "prefix": {"cifar": "", "imagenet": ""},
    },
    "pdarts": {
        "method": "P-DARTS",
        "paper": CITATIONS["PDARTS"],
        "repo": "chenxin061/pdarts@b880e8733010403307fe6a9bf7f02612fbc424ca",
        "file": "model.py",
        "genotype": {"cifar": "PDARTS", "imagenet": "PDARTS"},
        "aux_head_bn": True,
        "weights": {
            "cifar": "CIFAR-10: authors' model (chenxin061/pdarts README, Google Drive / BaiduYun); "
            "CIFAR-10 and CIFAR-100 as used by the study: tdchaitanya/nas-robustness README "
            "(Google Drive, pdarts/pretrained)",
            "imagenet": "authors' ImageNet model (chenxin061/pdarts README, Google Drive / BaiduYun; "
            "a dict with 'state_dict' saved from nn.DataParallel); also the study's Drive",
        },
        "prefix": {"cifar": "", "imagenet": "module."},
    },
    "pc_darts": {
        "method": "PC-DARTS",
        "paper": CITATIONS["PC_DARTS_cifar"],
        "repo": "yuhuixu1993/PC-DARTS@b74702f86c70e330ce0db35762cfade9df026bb7",
        "file": "model.py",
        "genotype": {"cifar": "PC_DARTS_cifar", "imagenet": "PC_DARTS_image"},
        "aux_head_bn": False,
        "weights": {
            "cifar": "the authors publish none ('Coming soon'); CIFAR-10 and CIFAR-100 as used by the study: "
            "tdchaitanya/nas-robustness README (Google Drive, pcdarts/pretrained)",
            "imagenet": "the authors publish none; the study's Google Drive "
            "(tdchaitanya/nas-robustness README)",
        },
        "prefix": {"cifar": "", "imagenet": "module."},
    },
}

# Cells found by robust architecture search (CIFAR family only: none was published for ImageNet). Defaults
# are each code's own training network; none of them publishes weights in a form we could verify.
_ROBUST_METHODS: dict[str, dict] = {
    "advrush": {
        "method": "AdvRush",
        "genotype": "ADVRUSH",
        "repo": "nutellamok/advrush@a15b26a4ef4e919783676b67647ec0ec8723d3b6",
        "file": "eval/model.py",
        "defaults": {"C": 36, "layers": 20, "auxiliary": False},  # adv_train.py defaults (no --auxiliary)
        "weights": "none published (the README trains them with adv_train.py and links no checkpoint)",
    },
    "racl": {
        "method": "RACL",
        "genotype": "RACL",
        "repo": "nutellamok/advrush@a15b26a4ef4e919783676b67647ec0ec8723d3b6",
        "file": "eval/model.py",
        "defaults": {"C": 36, "layers": 20, "auxiliary": False},  # as AdvRush's code trains it
        "weights": "none published (RACL's authors released no code or weights)",
    },
    "e2rnas": {
        "method": "E2RNAS",
        "genotype": "E2RNAS",
        "repo": "yuezhixiong/NAS-Benchmark@a288b6c2c576b1e8d7e80c9f1f83cf4f7b24fac0",
        "file": "DARTS/model.py",
        "defaults": {"C": 36, "layers": 20, "auxiliary": True},  # DARTS/train.py defaults
        "weights": "none verified: the repository's Git LFS files under DARTS/models/ do not say which cell "
        "each holds",
    },
}

_CIFAR_NOTES = (
    "auxiliary=True as published (the auxiliary head is trained, and counted by the fixtures' params_total, "
    "but unused at inference). Normalization: the authors' CIFAR-10 statistics; the study evaluated CIFAR-10 "
    "with (0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.2010) instead. Fashion-MNIST (28x28) defaults to "
    "auxiliary=False because the auxiliary head needs an 8x8 map."
)


def _cifar_builder(genotype: str):
    def build(
        num_classes: int,
        in_channels: int = 3,
        C: int = 36,
        layers: int = 20,
        auxiliary: bool = True,
        genotype: Genotype | str = genotype,
    ) -> NetworkCIFAR:
        return NetworkCIFAR(C, num_classes, layers, auxiliary, genotype, in_channels=in_channels)

    return build


def _imagenet_builder(genotype: str, aux_head_bn: bool):
    def build(
        num_classes: int,
        in_channels: int = 3,
        C: int = 48,
        layers: int = 14,
        auxiliary: bool = True,
        genotype: Genotype | str = genotype,
    ) -> NetworkImageNet:
        return NetworkImageNet(
            C, num_classes, layers, auxiliary, genotype, in_channels=in_channels, aux_head_bn=aux_head_bn
        )

    return build


for _name, _m in _METHODS.items():
    register_model(
        ModelSpec(
            name=_name,
            dataset_family="cifar",
            family="nas",
            method=_m["method"],
            paper=_m["paper"],
            builder=_cifar_builder(_m["genotype"]["cifar"]),
            reference=f"{_m['repo']} {_m['file']} NetworkCIFAR (genotype {_m['genotype']['cifar']})",
            weights=_m["weights"]["cifar"],
            checkpoint_prefix=_m["prefix"]["cifar"],
            normalization=NAS_CIFAR_NORMALIZATION,
            defaults={
                "*": {"C": 36, "layers": 20, "auxiliary": True, "genotype": _m["genotype"]["cifar"]},
                "fashion-mnist": {"auxiliary": False},
            },
            notes=_CIFAR_NOTES,
            quick_overrides={"C": 4, "layers": 4},
        )
    )
    register_model(
        ModelSpec(
            name=_name,
            dataset_family="imagenet",
            family="nas",
            method=_m["method"],
            paper=_m["paper"],
            builder=_imagenet_builder(_m["genotype"]["imagenet"], _m["aux_head_bn"]),
            reference=f"{_m['repo']} {_m['file']} NetworkImageNet (genotype {_m['genotype']['imagenet']})",
            weights=_m["weights"]["imagenet"],
            checkpoint_prefix=_m["prefix"]["imagenet"],
            normalization={"*": (IMAGENET_MEAN, IMAGENET_STD)},
            defaults={
                "*": {"C": 48, "layers": 14, "auxiliary": True, "genotype": _m["genotype"]["imagenet"]}
            },
            notes="auxiliary=True as published; the fixed AvgPool2d(7) needs 224x224 input. "
            + (
                "The auxiliary head has a BatchNorm after its 768-channel conv (P-DARTS only)."
                if _m["aux_head_bn"]
                else "The auxiliary head has no BatchNorm after its 768-channel conv "
                "(commented out upstream)."
            ),
            quick_overrides={"C": 4, "layers": 4},
        )
    )

for _name, _r in _ROBUST_METHODS.items():
    register_model(
        ModelSpec(
            name=_name,
            dataset_family="cifar",
            family="nas",
            method=_r["method"],
            paper=genotype_citation(_r["genotype"]),
            builder=_cifar_builder(_r["genotype"]),
            reference=f"{_r['repo']} {_r['file']} NetworkCIFAR (genotype {_r['genotype']}; the layout of "
            "quark0/darts cnn/model.py)",
            weights=_r["weights"],
            normalization=NAS_CIFAR_NORMALIZATION,
            defaults={
                "*": {**_r["defaults"], "genotype": _r["genotype"]},
                "fashion-mnist": {"auxiliary": False},
            },
            notes="the DARTS CIFAR network with this cell; C and layers give width-matched variants. "
            + _CIFAR_NOTES.split(". ", 1)[1],
            quick_overrides={"C": 4, "layers": 4},
        )
    )
