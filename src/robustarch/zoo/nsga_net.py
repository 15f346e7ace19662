"""NSGA-Net (micro search space) evaluation network for CIFAR.

Lu, Whalen, Boddeti, Dhebar, Deb, Goodman, Banzhaf, "NSGA-Net: Neural Architecture Search using
Multi-Objective Genetic Algorithm", GECCO 2019. Reference: ``ianwhale/nsga-net`` ``models/micro_models.py``
``PyramidNetworkCIFAR`` with genotype ``NSGANet``.

It reuses the DARTS cell (:class:`robustarch.zoo.darts.Cell`) with two differences the reference makes:
the cell width does not double at the reductions but grows by ``increment`` after every cell ("pyramid"),
and with ``SE=True`` each cell output is squeeze-excited. The genotype has five nodes per cell.
"""

from __future__ import annotations

import torch
from torch import nn

from robustarch.zoo._registry import ModelSpec, register_model
from robustarch.zoo.darts import NAS_CIFAR_NORMALIZATION, AuxiliaryHeadCIFAR, _check_layers, stack_cells
from robustarch.zoo.genotypes import CITATIONS, Genotype, as_genotype


class PyramidNetworkCIFAR(nn.Module):
    """NSGA-Net CIFAR network. Reductions (stride 2, no widening) sit at ``layers//3`` and ``2*layers//3``;
    cell ``i`` has ``C + i*increment`` channels per node.

    The drop-path probability is the ``droprate`` attribute, as in the reference training script. Eval mode
    returns the logits; training mode with ``auxiliary=True`` returns ``(logits, logits_aux)``.
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | str,
        increment: int = 4,
        SE: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        _check_layers(layers)
        genotype = as_genotype(genotype)
        self._layers = layers
        self._auxiliary = auxiliary
        self.droprate = 0.0

        C_curr = 3 * C  # stem multiplier
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        # widths grow by `increment` after every cell instead of doubling at reductions
        self.cells, C_prev, C_to_auxiliary = stack_cells(
            genotype, C_curr, C_curr, C, layers, reduction_prev=False,
            double_at_reduction=False, increment=increment, se=SE,
        )  # fmt: skip
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits_aux = None
        s0 = s1 = self.stem(x)
        drop_prob = float(self.droprate)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        if logits_aux is not None:
            return logits, logits_aux
        return logits


def _build(
    num_classes: int,
    in_channels: int = 3,
    C: int = 26,
    layers: int = 20,
    auxiliary: bool = True,
    increment: int = 4,
    SE: bool = True,
    genotype: Genotype | str = "NSGANet",
) -> PyramidNetworkCIFAR:
    return PyramidNetworkCIFAR(C, num_classes, layers, auxiliary, genotype, increment, SE, in_channels)


register_model(
    ModelSpec(
        name="nsga_net",
        dataset_family="cifar",
        family="nas",
        method="NSGA-Net",
        paper=CITATIONS["NSGANet"],
        builder=_build,
        reference="ianwhale/nsga-net@0ee6225c4ad3afabe5f5e8fd6dcb6dfffb1faf2d models/micro_models.py "
        "PyramidNetworkCIFAR (genotype NSGANet, SE=True)",
        weights="authors' CIFAR-10 (C=26, increment=4, SE) and CIFAR-100 (C=36, increment=6, SE) weights.pt "
        "(ianwhale/nsga-net README, Google Drive); as used by the study: tdchaitanya/nas-robustness README "
        "(Google Drive, nsga_net/pretrained)",
        checkpoint_prefix="",
        normalization=NAS_CIFAR_NORMALIZATION,
        defaults={
            # CIFAR-10 and every CIFAR-10-shaped dataset use the CIFAR-10 model's widths
            "*": {
                "C": 26,
                "increment": 4,
                "layers": 20,
                "auxiliary": True,
                "SE": True,
                "genotype": "NSGANet",
            },
            "cifar100": {"C": 36, "increment": 6},
            "fashion-mnist": {"auxiliary": False},
        },
        quick_overrides={"C": 4, "increment": 2, "layers": 4},
        notes="Widths differ per dataset, following the released checkpoints (README: CIFAR-10 2.43% error, "
        "1.97M params without the auxiliary head; CIFAR-100 14.42%, 4.1M). Normalization: the authors' "
        "CIFAR-10 statistics and, for CIFAR-100, those the study evaluated with. Fashion-MNIST (28x28) "
        "defaults to auxiliary=False because the auxiliary head needs an 8x8 map.",
    )
)
