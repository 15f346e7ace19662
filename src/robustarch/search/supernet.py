"""The search network of differentiable architecture search over the DARTS cell space, with partial channel
connections and edge normalization.

* DARTS (Liu, Simonyan, Yang, ICLR 2019): every edge of a cell is a softmax(alpha)-weighted mixture of all
  candidate operations (``SEARCH_SPACE``, the DARTS primitives, built from the zoo's one ops dictionary
  ``robustarch.zoo.operations.OPS`` without affine BatchNorm); the derived cell keeps, for every node, the two
  strongest incoming edges and on each its strongest operation other than ``none``.
* PC-DARTS (Xu et al., ICLR 2020; reference ``yuhuixu1993/PC-DARTS`` ``model_search.py``): only 1/K of an
  edge's channels go through the mixture, the rest bypass it (max-pooled on a reduction edge) and the two
  parts are channel-shuffled; edge normalization weighs each node's incoming edges by softmax(beta), and the
  edge scores of the derivation are softmax(alpha) * softmax(beta).
* P-DARTS (Chen et al., ICCV 2019, Sec. 3.3): at most ``skip_cap`` skip connections in the derived normal
  cell (the weakest extra one is excluded and the cell derived again), against the collapse into
  parameter-free cells.

The network takes normalized input; :mod:`robustarch.search.search` puts it inside the zoo's normalization
wrapper, so it sees [0, 1] images like every model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustarch.errors import RobustarchError
from robustarch.zoo.genotypes import Genotype
from robustarch.zoo.operations import OPS, FactorizedReduce, ReLUConvBN

# the DARTS search space (quark0/darts cnn/genotypes.py PRIMITIVES), in its order
SEARCH_SPACE: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
STEPS = 4  # intermediate nodes per cell, as in DARTS
EDGES = sum(i + 2 for i in range(STEPS))  # 14


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet): the next edge's partial slice mixes both parts."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PartialMixedOp(nn.Module):
    """One edge: the alpha-weighted sum of every candidate op over the first ``C // k`` channels, the other
    channels passed on (max-pooled when the edge reduces), then a channel shuffle. ``k = 1`` is DARTS."""

    def __init__(self, C: int, stride: int, k: int):
        super().__init__()
        if C % k:
            raise RobustarchError(f"partial channels: C={C} is not divisible by k={k}")
        self.k = k
        self.bypass = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()
        ops = []
        for name in SEARCH_SPACE:
            op = OPS[name](C // k, stride, False)
            if (
                "pool" in name
            ):  # the reference normalizes pooled outputs, which have no BatchNorm of their own
                op = nn.Sequential(op, nn.BatchNorm2d(C // k, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        part = x.shape[1] // self.k
        mixed = sum(w * op(x[:, :part]) for w, op in zip(weights, self.ops, strict=True))
        if self.k == 1:
            return mixed  # type: ignore[return-value]
        rest = self.bypass(x[:, part:])
        return channel_shuffle(torch.cat([mixed, rest], dim=1), self.k)  # type: ignore[list-item]


class SearchCell(nn.Module):
    """A cell of the search network: two preprocessed inputs, ``STEPS`` nodes each summing all earlier
    states through mixed edges (weighted by the edge normalization), the concat of the nodes as output."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool, k: int):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            PartialMixedOp(C, 2 if reduction and j < 2 else 1, k) for i in range(STEPS) for j in range(i + 2)
        )

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, edge_weights: torch.Tensor
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(STEPS):
            node = sum(
                edge_weights[offset + j] * self.edges[offset + j](h, weights[offset + j])
                for j, h in enumerate(states)
            )
            offset += len(states)
            states.append(node)  # type: ignore[arg-type]
        return torch.cat(states[-STEPS:], dim=1)


def node_softmax(betas: torch.Tensor) -> torch.Tensor:
    """Edge normalization: softmax of each node's incoming-edge betas (2, 3, 4, 5 edges), concatenated."""
    parts, start = [], 0
    for i in range(STEPS):
        parts.append(F.softmax(betas[start : start + i + 2], dim=-1))
        start += i + 2
    return torch.cat(parts)


class Supernet(nn.Module):
    """The PC-DARTS search network (CIFAR layout): conv + BN stem of ``3 * C`` channels, ``layers`` search
    cells with reductions at ``layers // 3`` and ``2 * layers // 3``, global pooling, a linear classifier;
    the architecture parameters ``alphas_*`` (EDGES x ops) and ``betas_*`` (EDGES) of both cell types."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        in_channels: int = 3,
        k: int = 4,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if layers < 3:
            raise RobustarchError(f"a search network needs layers >= 3 (two reduction cells), got {layers}")
        c_curr = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c_curr *= 2 if reduction else 1
            self.cells.append(SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev, k))
            reduction_prev = reduction
            c_pp, c_p = c_p, STEPS * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        n_ops = len(SEARCH_SPACE)
        # 1e-3 * N(0, 1), as the references initialise them
        draw = lambda *shape: nn.Parameter(1e-3 * torch.randn(*shape, generator=generator))  # noqa: E731
        self.alphas_normal, self.alphas_reduce = draw(EDGES, n_ops), draw(EDGES, n_ops)
        self.betas_normal, self.betas_reduce = draw(EDGES), draw(EDGES)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {False: F.softmax(self.alphas_normal, dim=-1), True: F.softmax(self.alphas_reduce, dim=-1)}
        edges = {False: node_softmax(self.betas_normal), True: node_softmax(self.betas_reduce)}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights[cell.reduction], edges[cell.reduction])
        return self.classifier(self.global_pooling(s1).flatten(1))

    @torch.no_grad()
    def edge_scores(self) -> dict[str, torch.Tensor]:
        """softmax(alpha) * softmax(beta) per cell type: what the derivation ranks by."""
        return {
            "normal": F.softmax(self.alphas_normal, -1) * node_softmax(self.betas_normal)[:, None],
            "reduce": F.softmax(self.alphas_reduce, -1) * node_softmax(self.betas_reduce)[:, None],
        }

    def genotype(self, skip_cap: int | None = 2) -> Genotype:
        """The derived cell pair (see :func:`derive_genotype`)."""
        scores = self.edge_scores()
        return derive_genotype(scores["normal"], scores["reduce"], skip_cap)


def _derive_cell(scores: torch.Tensor, excluded: torch.Tensor) -> list[tuple[str, int]]:
    """Two edges per node: the edges with the largest score of an op other than ``none`` (or an excluded
    op), each with that op; within a node the stronger edge comes first (as the references list them)."""
    usable = scores.masked_fill(excluded, float("-inf"))
    usable[:, SEARCH_SPACE.index("none")] = float("-inf")
    gene, start = [], 0
    for i in range(STEPS):
        rows = usable[start : start + i + 2]
        best, ops = rows.max(dim=1)
        for j in sorted(range(i + 2), key=lambda j: (-float(best[j]), j))[:2]:
            gene.append((SEARCH_SPACE[int(ops[j])], j))
        start += i + 2
    return gene


def derive_genotype(normal: torch.Tensor, reduce: torch.Tensor, skip_cap: int | None = 2) -> Genotype:
    """The genotype of edge scores (EDGES x ops, for normal and reduction cells). ``skip_cap``: at most that
    many ``skip_connect`` in the normal cell; the weakest surplus skip is excluded and the cell derived again,
    so its edge takes its next-best op or another edge takes its place (P-DARTS)."""
    excluded = torch.zeros_like(normal, dtype=torch.bool)
    skip = SEARCH_SPACE.index("skip_connect")
    gene = _derive_cell(normal, excluded)
    while skip_cap is not None and sum(op == "skip_connect" for op, _ in gene) > skip_cap:
        chosen = _edge_rows(gene)
        skips = [row for (op, _), row in zip(gene, chosen, strict=True) if op == "skip_connect"]
        weakest = min(skips, key=lambda row: float(normal[row, skip]))
        excluded[weakest, skip] = True
        gene = _derive_cell(normal, excluded)
    concat = list(range(2, 2 + STEPS))
    return Genotype(gene, concat, _derive_cell(reduce, torch.zeros_like(reduce, dtype=torch.bool)), concat)


def _edge_rows(gene: list[tuple[str, int]]) -> list[int]:
    """The score-matrix row of every edge of a derived cell (node i's inputs start at row sum(2..i+1))."""
    rows, start = [], 0
    for i in range(STEPS):
        rows += [start + j for _, j in gene[2 * i : 2 * i + 2]]
        start += i + 2
    return rows
