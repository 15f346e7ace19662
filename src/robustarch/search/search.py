"""``robustarch search``: first-order differentiable architecture search over the DARTS cell space with
partial channel connections, an adversarial inner step and an optional input-smoothness term.

Each step, as PC-DARTS' ``train_search.py`` (Xu et al., ICLR 2020) orders it: an architecture step (Adam on
alphas and betas, first order: the gradient of the loss on a batch of the *architecture half* of the training
split at the current weights; from epoch ``arch_warmup`` on), then a weight step (SGD on the network weights,
on a batch of the *weight half*). With ``adversarial`` both losses are adversarial: the batch is perturbed by
the inner maximisation of a training recipe (``fgsm-rs`` = fast-at's FGSM with a random start, ``pgd`` =
pgd-at's PGD-10, ``trades`` = TRADES' KL objective; :mod:`robustarch.train.adversarial`), the robust
bilevel objective of adversarial DARTS variants. ``smoothness`` adds AdvRush's term (Mok et al., ICCV 2021,
``advrush/architect.py`` with ``loss_cure``) to the architecture loss after ``smoothness_warmup`` epochs:
``gamma * mean ||grad_x L(x + z) - grad_x L(x)||_2`` with ``z = h sign(grad_x L) / ||sign(grad_x L)||`` (the
finite-difference curvature of CURE, Moosavi-Dezfooli et al., CVPR 2019), computed in eval mode as there.

Data parallel (torchrun, gloo on CPU): every process loads the global batch, augments and draws random
starts for all of it (so the draws do not depend on the process count) and computes its shards; gradients
are summed over shards and processes (one all-reduce per step) and every process applies the same update.
``micro_batches = K`` splits a process's share into K shards the same way, so one process with K = 2 computes
what two processes compute (tested: identical alphas and weights). BatchNorm normalizes each shard with its
own statistics, as DDP without SyncBatchNorm does. The eval-mode parts (TRADES' perturbation, the smoothness
term) read each process's running statistics, which shards update in a different order; those two options
are therefore not identical across process counts.

A checkpoint after every epoch (network, alphas, both optimizers, generators, history); running the same
command again resumes, bit-exactly on CPU. The result, ``OUT/genotype.json``, is what
``robustarch.zoo.build("darts", dataset, genotype="OUT/genotype.json")`` builds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.search.supernet import SEARCH_SPACE, Supernet
from robustarch.train import (
    AdversarialTraining,
    Augment,
    adversarial_loss,
    atomic_save,
    get_recipe,
    perturb,
    refuse_other_run,
    start_noise,
)
from robustarch.train.augment import augment_batch

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "search.pt"
GENOTYPE_NAME = "genotype.json"
FORMAT_VERSION = 1
# --adversarial NAME -> the recipe whose inner maximisation it uses (its eps replaced by --eps)
ADVERSARIES: dict[str, str | None] = {"none": None, "fgsm-rs": "fast-at", "pgd": "pgd-at", "trades": "trades"}


@dataclass
class SearchConfig:
    """What ``robustarch search`` is asked to do. Defaults: PC-DARTS' search (C 16, 8 cells, K 4, batch 256,
    SGD lr 0.1 cosine to 0, wd 3e-4, clip 5; Adam 6e-4, betas (0.5, 0.999), wd 1e-3; architecture updates
    from 30% of the epochs, i.e. 15 of 50), P-DARTS' cap of 2 skip connections."""

    dataset: str
    data_root: str | Path
    out: str | Path
    subset: str | None = None  # of the training split, e.g. "balanced:10000"; split in two halves
    epochs: int = 50
    batch_size: int = 256  # global, per half
    lr: float = 0.1
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_weight_decay: float = 1e-3
    arch_warmup: int | None = None  # epochs before the first architecture step; None = 30% of epochs
    C: int = 16
    layers: int = 8
    partial: int = 4  # PC-DARTS' K: 1/K of the channels go through the mixed ops
    adversarial: Literal["none", "fgsm-rs", "pgd", "trades"] = "fgsm-rs"
    eps: float = 8 / 255
    smoothness: float = 0.0  # AdvRush's weight: a_gamma 0.01 x loss_cure's lambda 4 = 0.04; 0 = off
    smoothness_h: float = 0.375  # AdvRush's h = 1.5 in normalized units, x CIFAR std ~0.25 (pixel units)
    smoothness_warmup: int | None = None  # None = AdvRush's 50 of 60 epochs, i.e. 5/6
    skip_cap: int | None = 2
    augment: Augment = field(default_factory=lambda: Augment(crop_padding=4, hflip=True))
    micro_batches: int = 1
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def adversary(self) -> AdversarialTraining | None:
        if self.adversarial not in ADVERSARIES:
            raise UnknownNameError("adversarial search objective", str(self.adversarial), ADVERSARIES)
        recipe = ADVERSARIES[self.adversarial]
        if recipe is None:
            return None
        spec = get_recipe(recipe).adversarial
        assert spec is not None
        return replace(spec, eps=self.eps, alpha=spec.alpha * self.eps / spec.eps)

    def run_key(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (everything but where and how it runs)."""
        key = asdict(self)
        for k in ("out", "device", "progress", "data_root"):
            key.pop(k)
        return json.loads(json.dumps(key, default=str))

    def warmups(self) -> tuple[int, int]:
        arch = round(0.3 * self.epochs) if self.arch_warmup is None else self.arch_warmup
        smooth = round(5 * self.epochs / 6) if self.smoothness_warmup is None else self.smoothness_warmup
        return arch, smooth


@dataclass
class SearchResult:
    genotype_path: Path
    genotype: Any
    history: list[dict[str, Any]]
    wall_s: float


def split_halves(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the weight half and the architecture half: within every class, alternate examples (so both
    halves are class-balanced even for class-sorted files, unlike the references' first/second half)."""
    first, second = [], []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        first.append(members[0::2])
        second.append(members[1::2])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


def curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float) -> torch.Tensor:
    """AdvRush's (CURE's) smoothness term, differentiable w.r.t. the architecture (create_graph): the mean
    over examples of ``||grad_x L(x + z) - grad_x L(x)||_2``, ``z = h sign(g) / ||sign(g)||_2``,
    ``g = grad_x L(x)``, with L the per-example cross-entropy; eval mode, as the reference."""
    was_training = model.training
    model.eval()
    try:
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        z = g.sign()
        z = h * (z + 1e-7) / (z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-7)
        diff = F.cross_entropy(model(x + z), y, reduction="sum") - F.cross_entropy(
            model(x), y, reduction="sum"
        )
        (g_diff,) = torch.autograd.grad(diff, x, create_graph=True)
        return g_diff.flatten(1).norm(dim=1).mean()
    finally:
        model.train(was_training)


class Searcher:
    """One search run: data halves, supernet (inside the zoo's normalization), optimizers, generators,
    per-epoch checkpoint. :func:`search` builds one from a :class:`SearchConfig`."""

    def __init__(self, config: SearchConfig, dist_info: Any, device: torch.device):
        from robustarch import data, zoo
        from robustarch.train import dataset_hash

        self.config, self.dist, self.device = config, dist_info, device
        self.adv = config.adversary()
        self.arch_warmup, self.smooth_warmup = config.warmups()
        self.shards = self.dist.world * config.micro_batches
        if config.batch_size % self.shards:
            raise RobustarchError(
                f"the global batch {config.batch_size} does not split into {self.shards} "
                "equal shards (processes x micro-batches)"
            )
        ds, _ = data.load(config.dataset, config.data_root, split="train", subset=config.subset)
        self.images, self.labels = ds.uint8(), ds.labels
        self.halves = split_halves(self.labels)
        self.steps = min(len(h) for h in self.halves) // config.batch_size
        if self.steps == 0:
            raise RobustarchError(
                f"each half of the {len(ds)} search examples must hold a batch of "
                f"{config.batch_size}; use a larger --subset or a smaller --batch-size"
            )
        self.data_hash = dataset_hash(ds)
        shape = zoo.dataset_shape(config.dataset)
        mean, std = zoo.get_spec("darts", config.dataset).mean_std(config.dataset)
        self.fill = list(mean)
        torch.manual_seed(
            config.seed
        )  # the weights' initialisation (the alphas draw from their own generator)
        net = Supernet(
            config.C,
            shape.num_classes,
            config.layers,
            shape.in_channels,
            config.partial,
            generator=torch.Generator().manual_seed(config.seed),
        )
        pad = 32 if shape.input_size < 32 else None
        self.net = net.to(device)
        self.model = zoo.Normalized(self.net, mean, std, pad_to=pad).to(device).train()
        self.w_opt = torch.optim.SGD(
            net.weight_parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.a_opt = torch.optim.Adam(
            net.arch_parameters(),
            lr=config.arch_lr,
            betas=(0.5, 0.999),
            weight_decay=config.arch_weight_decay,
        )
        self.aug_gen = torch.Generator().manual_seed(config.seed + 1)
        self.adv_gen = torch.Generator().manual_seed(config.seed + 2)
        self.alphas_init = {n: p.detach().cpu().clone() for n, p in self._arch_named()}
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.run_key = {**config.run_key(), "data_hash": self.data_hash, "world": self.dist.world}

    def _arch_named(self) -> list[tuple[str, nn.Parameter]]:
        names = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")
        return list(zip(names, self.net.arch_parameters(), strict=True))

    # ---- checkpoint

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "run_key": self.run_key,
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "aug": self.aug_gen.get_state(),
                "adv": self.adv_gen.get_state(),
            },
            "alphas_init": self.alphas_init,
            "history": self.history,
        }

    def save(self) -> None:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_save(self.state_dict(), self.out / CHECKPOINT_NAME)

    def load(self) -> bool:
        """Resume from OUT/search.pt; False when there is none. A checkpoint of another run is refused."""
        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        # the format is compared like a key of the run: another version's checkpoint is another search
        stored = {**state.get("run_key", {}), "format": state.get("format")}
        refuse_other_run(path, stored, {**self.run_key, "format": FORMAT_VERSION}, "search")
        self.net.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        torch.set_rng_state(state["rng"]["torch"])
        self.aug_gen.set_state(state["rng"]["aug"])
        self.adv_gen.set_state(state["rng"]["adv"])
        self.alphas_init, self.epoch, self.history = (
            state["alphas_init"],
            int(state["epoch"]),
            state["history"],
        )
        log.info("resumed the search from %s after epoch %d", path, self.epoch)
        return True

    # ---- one step

    def _shards(
        self, half: int, order: torch.Tensor, step: int
    ) -> list[tuple[torch.Tensor, torch.Tensor, Any]]:
        """This process's shards of global batch ``step`` of a half: (images, labels, random start)."""
        b = self.config.batch_size
        idx = self.halves[half][order[step * b : (step + 1) * b]]
        x = augment_batch(
            self.images[idx].float().div_(255.0), self.config.augment, self.aug_gen, fill=self.fill
        )
        noise = start_noise(self.adv, tuple(x.shape), self.adv_gen) if self.adv is not None else None
        y = self.labels[idx]
        first = self.dist.rank * self.config.micro_batches
        return [
            (
                x[s :: self.shards].to(self.device),
                y[s :: self.shards].to(self.device),
                None if noise is None else noise[s :: self.shards],
            )
            for s in range(first, first + self.config.micro_batches)
        ]

    def _loss(self, x: torch.Tensor, y: torch.Tensor, noise: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one shard: the adversarial objective, or cross-entropy without one."""
        if self.adv is None:
            logits = self.model(x)
            return F.cross_entropy(logits, y), logits
        x_adv = perturb(self.model, x, y, self.adv, noise)
        return adversarial_loss(self.model, x, y, x_adv, self.adv, F.cross_entropy)

    def _reduce(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum gradients over processes in one all-reduce (each shard's loss was divided by the shards)."""
        if self.dist.world == 1:
            return grads
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        out, start = [], 0
        for g in grads:
            out.append(flat[start : start + g.numel()].view_as(g))
            start += g.numel()
        return out

    def _update(
        self,
        opt: torch.optim.Optimizer,
        params: list[nn.Parameter],
        shards: list,
        smooth: bool,
        clip: float | None,
    ) -> tuple[float, int, int]:
        """Accumulate the shards' gradients for ``params``, reduce, (clip,) step; returns loss sum, correct,
        n."""
        grads = [torch.zeros_like(p) for p in params]
        loss_sum, correct, n = 0.0, 0, 0
        for x, y, noise in shards:
            loss, logits = self._loss(x, y, noise)
            if smooth:
                loss = loss + self.config.smoothness * curvature(self.model, x, y, self.config.smoothness_h)
            for acc, g in zip(grads, torch.autograd.grad(loss / self.shards, params), strict=True):
                acc += g
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            n += len(y)
        for p, g in zip(params, self._reduce(grads), strict=True):
            p.grad = g
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, correct, n

    # ---- epochs

    def lr_at(self, epoch: int) -> float:
        c = self.config  # CosineAnnealingLR(T_max=epochs, eta_min=lr_min) stepped per epoch, modern order
        return c.lr_min + (c.lr - c.lr_min) * (1 + math.cos(math.pi * epoch / c.epochs)) / 2

    def train_epoch(self) -> dict[str, Any]:
        c, e = self.config, self.epoch
        for group in self.w_opt.param_groups:
            group["lr"] = self.lr_at(e)
        gen = torch.Generator().manual_seed(c.seed * 100_003 + e)  # the same order on every process
        orders = [torch.randperm(len(h), generator=gen) for h in self.halves]
        arch_on, smooth = e >= self.arch_warmup, c.smoothness > 0 and e >= self.smooth_warmup
        totals = torch.zeros(6, dtype=torch.float64)
        t0 = time.perf_counter()
        steps = range(self.steps)
        if c.progress and self.dist.main:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"search epoch {e + 1}/{c.epochs}", leave=False, unit="step")
        for step in steps:
            if arch_on:
                totals[3:] += torch.tensor(
                    self._update(
                        self.a_opt, self.net.arch_parameters(), self._shards(1, orders[1], step), smooth, None
                    ),
                    dtype=torch.float64,
                )
            totals[:3] += torch.tensor(
                self._update(
                    self.w_opt,
                    self.net.weight_parameters(),
                    self._shards(0, orders[0], step),
                    False,
                    c.grad_clip,
                ),
                dtype=torch.float64,
            )
        if self.dist.world > 1:
            dist.all_reduce(totals)
        self.epoch += 1
        record = self._record(totals, time.perf_counter() - t0, arch_on, smooth)
        self.history.append(record)
        self.save()
        return record

    def _record(self, totals: torch.Tensor, seconds: float, arch_on: bool, smooth: bool) -> dict[str, Any]:
        w_loss, w_correct, w_n, a_loss, a_correct, a_n = totals.tolist()
        scores = self.net.edge_scores()
        entropy = float(
            -(scores["normal"] / scores["normal"].sum(1, keepdim=True))
            .log()
            .mul(scores["normal"] / scores["normal"].sum(1, keepdim=True))
            .sum(1)
            .mean()
        )
        record = {
            "epoch": self.epoch,
            "lr": self.lr_at(self.epoch - 1),
            "weight_loss": w_loss / max(1, w_n),
            "weight_acc": w_correct / max(1, w_n),
            "arch_step": arch_on,
            "smoothness": smooth,
            "arch_loss": a_loss / a_n if a_n else None,
            "arch_acc": a_correct / a_n if a_n else None,
            "alpha_change": max(
                float((p.detach().cpu() - self.alphas_init[n]).abs().max()) for n, p in self._arch_named()
            ),
            "normal_op_entropy": entropy,
            "genotype": str(self.net.genotype(self.config.skip_cap)),
            "seconds": seconds,
        }
        if self.dist.main:
            log.info(
                "search epoch %d/%d  lr %.4g  weight loss %.4f acc %.3f  arch loss %s  max |alpha change| "
                "%.4f  (%.1f s)",
                self.epoch,
                self.config.epochs,
                record["lr"],
                record["weight_loss"],
                record["weight_acc"],
                "-" if a_n == 0 else f"{record['arch_loss']:.4f}",
                record["alpha_change"],
                seconds,
            )
        return record

    def fit(self) -> list[dict[str, Any]]:
        while self.epoch < self.config.epochs:
            self.train_epoch()
        return self.history

    def write_genotype(self) -> tuple[Path, Any]:
        from robustarch.zoo.genotypes import save_genotype_file

        genotype = self.net.genotype(self.config.skip_cap)
        path = self.out / GENOTYPE_NAME
        if self.dist.main:
            scores = self.net.edge_scores()
            save_genotype_file(
                path,
                genotype,
                search={**self.run_key, "search_space": list(SEARCH_SPACE)},
                edge_scores={k: v.tolist() for k, v in scores.items()},
                alphas={n: p.detach().cpu().tolist() for n, p in self._arch_named()},
                alphas_init={n: t.tolist() for n, t in self.alphas_init.items()},
                history=self.history,
                torch=str(torch.__version__),
            )
        return path, genotype


def search(config: SearchConfig) -> SearchResult:
    """Run (or resume) a search; writes OUT/search.pt after every epoch and OUT/genotype.json at the end."""
    from robustarch.train import init_distributed

    t0 = time.perf_counter()
    d, device = init_distributed(config.device)
    try:
        searcher = Searcher(config, d, device)
        searcher.load()
        if d.main:
            log.info(
                "searching on %s: %d epochs of %d steps, global batch %d, %d process(es) x %d "
                "micro-batch(es), adversarial %s",
                config.dataset,
                config.epochs,
                searcher.steps,
                config.batch_size,
                d.world,
                config.micro_batches,
                searcher.adv.describe() if searcher.adv else "none",
            )
        history = searcher.fit()
        path, genotype = searcher.write_genotype()
        return SearchResult(path, genotype, history, time.perf_counter() - t0)
    finally:
        d.close()
