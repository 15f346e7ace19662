"""Training a zoo network with a published recipe (:mod:`robustarch.train.recipes`).

Where no checkpoint is published, the study (Devaguptapu et al., 2020, Sec. 3) trained the models "from
scratch until we obtain the performance reported in the respective papers"; :func:`train` does that.

* The network is trained *with* its input normalization inside (the same ``mean``/``std`` the zoo puts in
  front of it when it loads the weights), on ``[0, 1]`` images; augmentation runs on batched tensors.
* Mixed precision (``torch.autocast``) on CUDA; plain float32 on CPU.
* DDP when started by ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on GPU. The recipe's batch is
  the global batch; every process takes an equal share.
* A checkpoint after every epoch (model, optimizer, scheduler, grad scaler, every process's RNG states,
  history); running the same command again resumes from it, bit-exactly on CPU.
* The result is saved with :func:`robustarch.zoo.save_checkpoint`, in the format
  :func:`robustarch.zoo.load` reads, with metadata: recipe, epochs, final clean accuracy, data hash.
* Adversarial recipes (``pgd-at``, ``trades``, ``fast-at``; :mod:`robustarch.train.adversarial`) perturb
  every training batch; their per-epoch check measures clean, FGSM and PGD accuracy on images held out from
  the training split and stops or flags catastrophic overfitting (:mod:`robustarch.train.overfitting`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from robustarch.errors import RobustarchError
from robustarch.runtime import request_fast_exit
from robustarch.train.adversarial import adversarial_loss, perturb, start_noise
from robustarch.train.augment import augment_batch
from robustarch.train.overfitting import (
    RobustnessCheck,
    describe_overfitting,
    detect_overfitting,
    measure,
)
from robustarch.train.recipes import Recipe, default_recipe, get_recipe

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"  # the per-epoch training state
RESULT_NAME = "model.pt"  # the trained network, in robustarch.zoo's checkpoint format
SUMMARY_NAME = "train.json"  # human-readable summary and history
FORMAT_VERSION = 1
PROGRESS_NOTE_S = 30.0  # seconds between progress log lines when no progress bar is shown

Amp = Literal["auto", "off", "fp16", "bf16"]


@dataclass
class TrainConfig:
    """What ``robustarch train`` is asked to do. ``None`` means "the recipe's published value"."""

    model: str
    dataset: str
    data_root: str | Path
    out: str | Path
    # a recipe name or a Recipe; default: the published recipe of the model's method
    recipe: str | Recipe | None = None
    epochs: int | None = None
    batch_size: int | None = None  # global batch
    lr: float | None = None
    seed: int = 0
    device: str | None = None  # default: cuda:LOCAL_RANK when available, else cpu
    amp: Amp = "auto"  # auto = fp16 autocast on CUDA, off on CPU
    # which examples: a robustarch.data subset ("balanced:N[:SEED]", "first:N", "ids:FILE"), then the first
    # `limit` of them; the final clean accuracy is measured on the test ones
    train_subset: str | None = None
    train_limit: int | None = None
    test_subset: str | None = None
    test_limit: int | None = None
    arch: dict[str, Any] = field(default_factory=dict)  # architecture overrides for zoo.build
    # the per-epoch robustness check: held-out training images (0 = no check) and what a detected
    # catastrophic overfitting does; None = the recipe's
    check_images: int | None = None
    on_overfit: Literal["stop", "flag"] | None = None
    workers: int = 0
    progress: bool = True  # a progress bar per epoch (rank 0)
    eval_batch_size: int = 256


@dataclass
class TrainResult:
    path: Path  # the trained network (zoo checkpoint)
    clean_accuracy: float  # top-1 on the test split (or its first test_limit examples), in [0, 1]
    n_test: int
    epochs: int
    recipe: str
    data_hash: str
    history: list[dict[str, Any]]
    wall_s: float
    catastrophic_overfitting: dict[str, Any] | None = None  # what the check detected, if anything
    epochs_trained: int = 0  # fewer than `epochs` when the check stopped the run


# --------------------------------------------------------------------------------------------- helpers


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False  # this process group was created here, so it is torn down here

    def close(self) -> None:
        """Tear down a process group we created: a process that exits with gloo's threads still running
        aborts ("terminate called without an active exception")."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[_Dist, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA), if any; returns this process's
    place in it (world size, rank; ``close()`` tears a group it created down) and its device."""
    return _init_distributed(device)


def _init_distributed(device: str | None) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns_group = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns_group = True
    if dist.is_available() and dist.is_initialized():
        d = _Dist(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), owns_group)
    else:
        d = _Dist()
    if device is None:
        dev = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{d.local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return d, dev


def _split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def _set_drop_path(net: nn.Module, p: float) -> bool:
    """DARTS-family nets read ``drop_path_prob``, NSGA-Net ``droprate``; returns whether one was set."""
    done = False
    for attr in ("drop_path_prob", "droprate"):
        if hasattr(net, attr):
            setattr(net, attr, p)
            done = True
    return done


def dataset_hash(ds: Dataset, batch_size: int = 1024) -> str:
    """Identifies the exact examples a model was trained on, whatever files or subset they came from:
    sha256(sha256(uint8 pixels, (N, C, H, W) in index order) + sha256(int64 labels))."""
    h_img, h_lab = hashlib.sha256(), hashlib.sha256()
    bulk = _bulk_tensors(ds)
    if bulk is not None:
        images, labels = bulk
        h_img.update(images.contiguous().numpy().tobytes())
        h_lab.update(labels.to(torch.int64).numpy().tobytes())
    else:
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            h_img.update(_to_uint8(x).contiguous().numpy().tobytes())
            h_lab.update(torch.as_tensor(y).to(torch.int64).numpy().tobytes())
    return hashlib.sha256((h_img.hexdigest() + h_lab.hexdigest()).encode()).hexdigest()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.uint8 else (x.float() * 255).round().clamp(0, 255).to(torch.uint8)


# decode a whole training split into memory when it is at most this big (CIFAR: 150 MB; ImageNet: no)
BULK_LIMIT_BYTES = 2 << 30


def _bulk_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(uint8 images, labels) of a robustarch.data ImageDataset small enough to hold in memory, else None."""
    if not (hasattr(ds, "uint8") and hasattr(ds, "labels") and hasattr(ds, "image_size")):
        return None
    size = len(ds) * int(torch.tensor(ds.image_size).prod())  # type: ignore[arg-type]
    if not getattr(ds, "is_decoded", False) and size > BULK_LIMIT_BYTES:
        return None
    return ds.uint8(), ds.labels  # type: ignore[union-attr, operator]


class _TensorBatches:
    """Batches of an in-memory uint8 split in the sampler's order: what a DataLoader over the same sampler
    yields (converted to float on the device), without per-example Python calls."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: DistributedSampler, batch: int):
        self.images, self.labels, self.sampler, self.batch = images, labels, sampler, batch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.int64)
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            yield self.images[idx], self.labels[idx]


@torch.no_grad()
def evaluate_clean(
    model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: Any = None
) -> tuple[int, int]:
    """(correct, total) top-1 of ``model`` (eval mode, logits only) over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        with ctx:
            logits, _ = _split_output(model(x))
        correct += int((logits.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return correct, total


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed over ``path``: a crash leaves the old checkpoint whole."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def refuse_other_run(path: Path, stored: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Raise when the checkpoint at ``path`` was written for another run key than ``current`` (a training
    or a search with other settings), naming the keys that differ."""
    if stored == current:
        return
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    raise RobustarchError(
        f"{path} belongs to a different {what} (differs in: {', '.join(diff)}); "
        "choose another --out directory or delete it to start over"
    )


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One training run: network, data, recipe, optimizer, schedule and the per-epoch checkpoint.

    :func:`train` builds one from a :class:`TrainConfig`; tests may build one around any network.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        recipe: Recipe,
        *,
        out: str | Path,
        fill: Iterable[float] | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        amp: Amp = "auto",
        workers: int = 0,
        progress: bool = True,
        run_key: dict[str, Any] | None = None,
        dist_info: _Dist | None = None,
        channels_last: bool | None = None,
        check_set: Dataset | None = None,
    ):
        self.recipe = recipe
        self.device = torch.device(device)
        self.dist = dist_info or _Dist()
        self.out = Path(out)
        self.seed = seed
        self.progress = progress
        self.run_key = {**(run_key or {}), "recipe": recipe.to_dict(), "seed": seed, "world": self.dist.world}
        # cutout writes the normalization mean (zero after normalizing, as in the reference Cutout)
        mean = getattr(model, "mean", None)
        if fill is None:
            fill = mean.flatten().tolist() if mean is not None else [0.0]
        self.fill = list(fill)
        if recipe.batch_size % self.dist.world:
            raise RobustarchError(
                f"the global batch {recipe.batch_size} does not split evenly over {self.dist.world} processes"
            )
        self.local_batch = recipe.batch_size // self.dist.world

        # `model` takes [0, 1] images (normalization inside); `net` is the bare network inside it
        model = model.to(self.device)
        # channels_last: faster convolutions on GPU tensor cores (the state_dict is the same). Not on CPU:
        # torch 2.13's CPU backward crashes (SIGSEGV) on an ImageNet-stem ResNet in channels_last.
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.net: nn.Module = getattr(model, "net", model)
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
            request_fast_exit("DistributedDataParallel keeps the process group's threads alive")
        self.model = model
        if recipe.drop_path and not _set_drop_path(self.net, 0.0):
            log.warning("recipe %s asks for drop path; the network has no drop-path attribute", recipe.name)

        self.sampler = DistributedSampler(
            train_set, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True, seed=seed
        )
        bulk = _bulk_tensors(train_set)
        self.loader: Iterable
        if bulk is not None:
            self.loader = _TensorBatches(*bulk, self.sampler, self.local_batch)
        else:
            self.loader = DataLoader(
                train_set,
                batch_size=self.local_batch,
                sampler=self.sampler,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
            )
        self.steps_per_epoch = len(self.loader)  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            raise RobustarchError("the training set is empty")

        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, recipe.lr_factor(self.steps_per_epoch)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

        amp_on = amp in ("fp16", "bf16") or (amp == "auto" and self.device.type == "cuda")
        if amp_on and self.device.type != "cuda":
            raise RobustarchError("mixed precision is only used on CUDA devices; use --amp off on CPU")
        self.amp_dtype = (torch.bfloat16 if amp == "bf16" else torch.float16) if amp_on else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        # augmentation draws come from their own generator, identical on every process (see augment.py);
        # so do the random starts of adversarial training
        self.aug_gen = torch.Generator().manual_seed(seed)
        self.adv_gen = torch.Generator().manual_seed(seed + 0x5EED)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self._init_check(check_set)

    def _init_check(self, check_set: Dataset | None) -> None:
        """The held-out images of the per-epoch robustness check (all in memory: a few hundred)."""
        self.check_data: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.recipe.check is not None and self.recipe.check.images > 0 and check_set is not None:
            bulk = _bulk_tensors(check_set)
            if bulk is None:
                pairs = [check_set[i] for i in range(len(check_set))]  # type: ignore[arg-type]
                bulk = (torch.stack([p[0] for p in pairs]), torch.as_tensor([p[1] for p in pairs]))
            self.check_data = bulk
        self.best: dict[str, Any] | None = None  # the epoch with the best check PGD accuracy, and its weights
        self.stopped = False
        self.overfit: dict[str, Any] | None = None

    @property
    def module(self) -> nn.Module:
        """The [0, 1]-input model without a DDP wrapper (adversarial examples are computed on it)."""
        return (
            self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model
        )

    # ---- checkpoint

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "aug": self.aug_gen.get_state(),
            "adv": self.adv_gen.get_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self) -> dict[str, Any]:
        rng = self._rng_state()
        if self.dist.world > 1:
            every: list[Any] = [None] * self.dist.world
            dist.all_gather_object(every, {k: v.cpu() for k, v in rng.items()})
        else:
            every = [rng]
        return {
            "format": FORMAT_VERSION,
            "run_key": self.run_key,
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": every,
            "history": self.history,
            "best": self.best,
            "stopped": self.stopped,
            "overfit": self.overfit,
        }

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # every rank takes part in the RNG gather
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_save(state, self.checkpoint_path)

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore the state saved after an epoch; False when there is none. The run must be the same."""
        path = Path(path) if path else self.checkpoint_path
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT_VERSION:
            raise RobustarchError(
                f"{path} is not a robustarch training checkpoint (format {state.get('format')!r})"
            )
        refuse_other_run(path, state["run_key"], self.run_key, "run")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.dist.rank]
        torch.set_rng_state(rng["torch"])
        self.aug_gen.set_state(rng["aug"])
        self.adv_gen.set_state(rng["adv"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best, self.stopped, self.overfit = state["best"], bool(state["stopped"]), state["overfit"]
        log.info("resumed from %s after epoch %d", path, self.epoch)
        return True

    # ---- training

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """One optimizer step on a batch of this process; returns (loss, correct)."""
        r = self.recipe
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        y = torch.as_tensor(y).to(self.device, non_blocking=True)
        x = augment_batch(
            x, r.augment, self.aug_gen, fill=self.fill, rank=self.dist.rank, world=self.dist.world
        )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if r.adversarial is not None:
            loss, logits = self._adversarial_loss(x, y)
        else:
            with self._autocast():
                logits, aux = _split_output(self.model(x))
                loss = self.criterion(logits, y)
                if r.aux_weight and aux is not None:
                    loss = loss + r.aux_weight * self.criterion(aux, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if r.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _adversarial_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturb the batch (random start drawn for the global batch, this process's rows), then the
        recipe's adversarial loss through the (DDP) model."""
        spec = self.recipe.adversarial
        assert spec is not None
        shape = (len(x) * self.dist.world, *x.shape[1:])
        noise = start_noise(spec, shape, self.adv_gen, slice(self.dist.rank, None, self.dist.world))
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        x_adv = perturb(self.module, x, y, spec, noise, grad_scale=scale, autocast=self._autocast)
        if self.channels_last:
            x_adv = x_adv.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return adversarial_loss(self.model, x, y, x_adv, spec, self.criterion, self.recipe.aux_weight)

    def train_epoch(self) -> dict[str, Any]:
        r, e = self.recipe, self.epoch
        self.sampler.set_epoch(e)
        _set_drop_path(self.net, r.drop_path * e / r.epochs)
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = seen = 0
        batches: Iterable = self.loader
        bar = None
        if self.progress and self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(self.loader, desc=f"epoch {e + 1}/{r.epochs}", leave=False, unit="batch")
            batches = bar
        last_note = time.perf_counter()
        for step, (x, y) in enumerate(batches, 1):
            loss, c = self.train_step(x, y)
            n = len(y)
            loss_sum += loss * n
            correct += c
            seen += n
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct / seen:.3f}")
            elif self.dist.main and time.perf_counter() - last_note > PROGRESS_NOTE_S:
                # without a bar (e.g. a worker process), a line now and then shows the run is moving
                last_note = time.perf_counter()
                log.info("%s epoch %d/%d: batch %d/%d, loss %.4f", self.run_key.get("model", "training"),
                         e + 1, r.epochs, step, self.steps_per_epoch, loss_sum.item() / seen)  # fmt: skip
        if bar is not None:
            bar.close()
        totals = torch.tensor([loss_sum.item(), correct, seen], dtype=torch.float64)
        if self.dist.world > 1:
            totals = totals.to(self.device)
            dist.all_reduce(totals)
            totals = totals.cpu()
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "lr": lr,
            "train_loss": totals[0].item() / totals[2].item(),
            "train_acc": totals[1].item() / totals[2].item(),
            "seconds": time.perf_counter() - t0,
        }
        if self.dist.main:
            log.info(
                "%s epoch %d/%d  lr %.4g  loss %.4f  train acc %.4f  (%.1f s)",
                self.run_key.get("model", "training"),
                self.epoch,
                r.epochs,
                lr,
                record["train_loss"],
                record["train_acc"],
                record["seconds"],
            )
        if self.check_data is not None:
            record["check"] = self._robustness_check()
        self.history.append(record)
        self.save_checkpoint()
        return record

    def _robustness_check(self) -> dict[str, Any]:
        """The per-epoch check: measure, keep the best epoch's weights, act on catastrophic overfitting."""
        check = self.recipe.check
        assert check is not None
        result = self._measure_check(check)
        earlier = [h["check"] for h in self.history if "check" in h]
        event = detect_overfitting([*earlier, result], check.drop)
        if event is None:
            if self.best is None or result["pgd"] > self.best["pgd"]:
                state = copy.deepcopy(self.net.state_dict())
                self.best = {"epoch": self.epoch, "pgd": result["pgd"], "model": state}
            return result
        result["catastrophic_overfitting"] = True
        self.overfit = self.overfit or event
        if self.dist.main:
            then = "stopping, with the weights of the best epoch" if check.action == "stop" else "going on"
            log.warning("%s; %s (on_overfit=%s)", describe_overfitting(event), then, check.action)
        if check.action == "stop" and self.best is not None:
            self.stopped = True
            self.net.load_state_dict(self.best["model"])
        return result

    def _measure_check(self, check: RobustnessCheck) -> dict[str, Any]:
        """Clean / FGSM / PGD accuracy on the held-out images, measured by rank 0 and sent to every rank
        (their BatchNorm buffers differ slightly under DDP, their decisions must not)."""
        assert self.check_data is not None
        values = torch.zeros(3, dtype=torch.float64)
        if self.dist.main:
            m = measure(self.module, *self.check_data, check, self.device)
            values = torch.tensor([m["clean"], m["fgsm"], m["pgd"]], dtype=torch.float64)
        if self.dist.world > 1:
            values = values.to(self.device)
            dist.broadcast(values, 0)
            values = values.cpu()
        clean, fgsm, pgd = values.tolist()
        result = {"epoch": self.epoch, "n": len(self.check_data[1]), "clean": clean, "fgsm": fgsm, "pgd": pgd}
        if self.dist.main:
            log.info("check on %d held-out images: clean %.3f  FGSM %.3f  PGD-%d %.3f",
                     result["n"], clean, fgsm, check.pgd_steps, pgd)  # fmt: skip
        return result

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs (all of them, or those after the checkpoint it resumed from), unless the
        robustness check stopped the run."""
        while self.epoch < self.recipe.epochs and not self.stopped:
            self.train_epoch()
        return self.history


# --------------------------------------------------------------------------------------------- entry


def resolve_recipe(config: TrainConfig, method: str, family: str, dataset_family: str) -> Recipe:
    if isinstance(config.recipe, Recipe):
        base = config.recipe
    else:
        base = get_recipe(config.recipe) if config.recipe else default_recipe(method, family, dataset_family)
    if base.dataset_family != dataset_family:
        log.warning(
            "recipe %s was published for %s-style data; dataset %s is %s-style",
            base.name,
            base.dataset_family,
            config.dataset,
            dataset_family,
        )
    recipe = base.with_overrides(epochs=config.epochs)
    if config.batch_size is not None and config.batch_size != base.batch_size:
        recipe = recipe.scaled_to_batch(config.batch_size)
        if config.lr is None:
            log.info("batch %d instead of %d: learning rate scaled linearly to %.4g",
                     recipe.batch_size, base.batch_size, recipe.lr)  # fmt: skip
    recipe = recipe.with_overrides(lr=config.lr)
    if config.check_images is not None or config.on_overfit is not None:
        check = recipe.check or RobustnessCheck()
        recipe = replace(recipe, check=replace(
            check,
            images=check.images if config.check_images is None else config.check_images,
            action=config.on_overfit or check.action,
        ))  # fmt: skip
    if recipe.epochs < 1 or recipe.batch_size < 1 or recipe.lr <= 0:
        raise RobustarchError("epochs and batch size must be >= 1 and the learning rate > 0")
    return recipe


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; see the module docstring."""
    t0 = time.perf_counter()
    d, device = _init_distributed(config.device)
    try:
        return _train(config, d, device, t0)
    finally:
        d.close()


def _train(config: TrainConfig, d: _Dist, device: torch.device, t0: float) -> TrainResult:
    from robustarch import data, zoo  # imported here: the zoo imports every architecture file

    spec = zoo.get_spec(config.model, config.dataset)
    recipe = resolve_recipe(config, spec.method, spec.family, zoo.dataset_shape(config.dataset).family)

    train_set, train_spec = data.load(
        config.dataset, config.data_root, split="train", limit=config.train_limit, subset=config.train_subset
    )
    test_set, _ = data.load(
        config.dataset, config.data_root, split="test", limit=config.test_limit, subset=config.test_subset
    )
    counts = train_set.class_counts(train_spec.num_classes) if hasattr(train_set, "class_counts") else []
    if counts and min(counts) == 0:
        log.warning(
            "the training examples (%s) miss %d of the %d classes (files sorted by class?): a class-balanced "
            "sample (--train-subset balanced:N) trains on all of them",
            train_spec.subset, counts.count(0), len(counts),
        )  # fmt: skip
    check_set = None
    if recipe.check is not None and recipe.check.images > 0:
        train_set, check_set = hold_out(train_set, recipe.check.images, seed=config.seed)

    arch = canonical_arch(config.arch)
    defaults = zoo.build_kwargs(config.model, config.dataset, **arch)
    if "auxiliary" in defaults and bool(defaults["auxiliary"]) != bool(recipe.aux_weight):
        # train the auxiliary head exactly when the recipe weighs its loss (an unused head would get no
        # gradient, which DDP rejects); the checkpoint records the choice and loads back with it
        arch["auxiliary"] = bool(recipe.aux_weight)
    torch.manual_seed(config.seed)
    # zoo.load without weights: the freshly initialised network inside the very normalization (and padding)
    # wrapper the zoo puts around it when it loads the trained weights back
    model = zoo.load(config.model, config.dataset, **arch).train()
    net = zoo.unwrap(model)
    out = Path(config.out)
    data_hash = dataset_hash(train_set)
    run_key = {
        "model": config.model,
        "dataset": config.dataset,
        "arch": {k: arch[k] for k in sorted(arch)},
        "train_subset": config.train_subset,
        "train_limit": config.train_limit,
        "data_hash": data_hash,
    }
    trainer = Trainer(
        model,
        train_set,
        recipe,
        out=out,
        seed=config.seed,
        device=device,
        amp=config.amp,
        workers=config.workers,
        progress=config.progress,
        run_key=run_key,
        dist_info=d,
        check_set=check_set,
    )
    if d.main:
        log.info(
            "training %s on %s with recipe %s: %d epochs, global batch %d, %d processes, device %s%s",
            config.model,
            config.dataset,
            recipe.name,
            recipe.epochs,
            recipe.batch_size,
            d.world,
            device,
            f", {trainer.amp_dtype} autocast" if trainer.amp_dtype else "",
        )
    trainer.load_checkpoint()
    history = trainer.fit()

    correct = total = 0
    path = out / RESULT_NAME
    if d.main:
        loader = DataLoader(
            test_set, batch_size=config.eval_batch_size, shuffle=False, num_workers=config.workers
        )
        correct, total = evaluate_clean(model, loader, device, trainer.amp_dtype)
        accuracy = correct / max(1, total)
        log.info("clean accuracy on %d %s test examples: %.4f", total, config.dataset, accuracy)
        meta = {
            "recipe": recipe.name,
            "recipe_params": recipe.to_dict(),
            "epochs": recipe.epochs,
            "clean_accuracy": accuracy,
            "n_test": total,
            "test_subset": config.test_subset,
            "test_limit": config.test_limit,
            "train_subset": config.train_subset,
            "train_limit": config.train_limit,
            "n_train": len(train_set),  # type: ignore[arg-type]
            "data_hash": data_hash,
            "dataset": config.dataset,
            "model": config.model,
            "overrides": run_key["arch"],  # zoo.load rebuilds the network with these
            "seed": config.seed,
            "world_size": d.world,
            "amp": str(trainer.amp_dtype) if trainer.amp_dtype else "off",
            "torch": torch.__version__,
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
            "adversarial": recipe.adversarial.describe() if recipe.adversarial else None,
            "epochs_trained": trainer.epoch,
            "n_check": 0 if check_set is None else len(check_set),  # type: ignore[arg-type]
            "check_ids_sha256": None if check_set is None else _ids_digest(check_set),
            "robustness_checks": [h["check"] for h in history if "check" in h],
            "catastrophic_overfitting": trainer.overfit,
            "weights_from_epoch": trainer.best["epoch"]
            if trainer.stopped and trainer.best
            else trainer.epoch,
        }
        meta = json.loads(json.dumps(meta))  # plain types only (torch.__version__ is a str subclass)
        zoo.save_checkpoint(net, path, metadata=meta)
        summary = {**meta, "weights": str(path), "history": history, "wall_s": time.perf_counter() - t0}
        (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if d.world > 1:
        acc_t = torch.tensor([correct, total], dtype=torch.float64, device=device)
        dist.broadcast(acc_t, 0)
        correct, total = int(acc_t[0]), int(acc_t[1])
    return TrainResult(
        path=path,
        clean_accuracy=correct / max(1, total),
        n_test=total,
        epochs=recipe.epochs,
        recipe=recipe.name,
        data_hash=data_hash,
        history=history,
        wall_s=time.perf_counter() - t0,
        catastrophic_overfitting=trainer.overfit,
        epochs_trained=trainer.epoch,
    )


def canonical_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Architecture overrides as a checkpoint records them: a genotype given as a genotype.json path is
    replaced by the genotype itself, so the trained model loads anywhere (zoo.load rebuilds from it)."""
    from robustarch.zoo.genotypes import as_genotype, is_genotype_file

    arch = dict(arch)
    if is_genotype_file(arch.get("genotype")):
        arch["genotype"] = str(as_genotype(arch["genotype"]))
    return arch


def hold_out(ds: Dataset, n: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(training examples, ``n`` held-out examples): a seeded random choice, both in their original order.
    The held-out images are what the per-epoch robustness check measures, never trained on."""
    size = len(ds)  # type: ignore[arg-type]
    if not hasattr(ds, "select"):
        raise RobustarchError("the robustness check holds images out of a robustarch.data dataset only")
    if not 0 < n < size:
        raise RobustarchError(
            f"cannot hold out {n} of {size} training examples for the robustness check (--check-images)"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 0xC4EC))
    held = order[:n].sort().values
    kept = order[n:].sort().values
    return ds.select(kept.tolist()), ds.select(held.tolist())  # type: ignore[attr-defined]


def _ids_digest(ds: Dataset) -> str:
    ids = getattr(ds, "example_ids", None)
    ids = torch.arange(len(ds)) if ids is None else ids  # type: ignore[arg-type]
    return hashlib.sha256(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()


def config_as_dict(config: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
