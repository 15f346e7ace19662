"""Checkpoints: a round trip for every registered model, every accepted file form, the key report of a
wrong checkpoint, and the refusal of pickled code unless the caller opts in."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from robustarch import zoo
from robustarch.errors import RobustarchError
from robustarch.zoo._checkpoint import load_state_dict_strict, read_checkpoint, remap_keys

SPECS = zoo.list_specs()
SPEC_IDS = [f"{s.name}-{s.dataset_family}" for s in SPECS]


def _dataset(spec: zoo.ModelSpec) -> str:
    return "cifar10" if spec.dataset_family == "cifar" else "imagenet"


def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float entry (BatchNorm statistics included) a distinct random value, so a loader that
    dropped or swapped any entry would change the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in zoo.unwrap(model).state_dict().items():
            if t.is_floating_point():
                values = (
                    torch.rand(t.shape, generator=gen) * 0.2 + 0.9 if key.endswith("running_var") else None
                )
                t.copy_(values if values is not None else torch.randn(t.shape, generator=gen) * 0.1)
    return model


def _images(spec: zoo.ModelSpec) -> torch.Tensor:
    return torch.rand(2, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(1))


def _small_resnet() -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    model = _randomize_(zoo.load("resnet18", "cifar10", width=8))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)
    return model, zoo.unwrap(model).state_dict(), logits


def _logits(path: Path, x: torch.Tensor, **kw: object) -> torch.Tensor:
    model = zoo.load("resnet18", "cifar10", weights=path, width=8, **kw)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_round_trip_for_every_model(spec: zoo.ModelSpec, tmp_path: Path) -> None:
    dataset = _dataset(spec)
    model = _randomize_(zoo.load(spec.name, dataset, **spec.quick_overrides))
    x = _images(spec)
    with torch.no_grad():
        before = model(x)
    meta = {"model": spec.name, "dataset": dataset, "overrides": spec.quick_overrides, "epoch": 3}
    path = zoo.save_checkpoint(model, tmp_path / "ckpt.pt", metadata=meta)
    # the file is plain data: weights_only loading reads it, and it holds the bare network's keys
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == set(zoo.unwrap(model).state_dict())
    # overrides recorded in the metadata rebuild the same small variant without being passed again
    again = zoo.load(spec.name, dataset, weights=path)
    assert again.checkpoint_metadata == meta and not again.training
    with torch.no_grad():
        assert torch.equal(again(x), before)


def test_dataparallel_prefix_and_wrapped_dicts(tmp_path: Path) -> None:
    _, state, logits = _small_resnet()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    prefixed = {f"module.{k}": v for k, v in state.items()}
    forms = {
        "raw": state,
        "module": prefixed,
        "state_dict": {
            "state_dict": prefixed,
            "epoch": 10,
            "best_acc1": 93.1,
        },  # the study's DataParallel files
        "model_state_dict": {
            "model_state_dict": state,
            "optimizer_state_dict": {"state": {}, "param_groups": []},
        },
        "net": {"net": state, "acc": 93.0},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "wrapper": {f"module.net.{k}": v for k, v in state.items()},  # DataParallel(load(...)) saved directly
    }
    for name, obj in forms.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        assert torch.equal(_logits(path, x), logits), name
    # a model folder holding one weight file (the DenseNAS distribution: net_config + weights.pt)
    folder = tmp_path / "folder"
    folder.mkdir()
    torch.save(prefixed, folder / "weights.pt")
    (folder / "net_config").write_text("...")
    assert torch.equal(_logits(folder, x), logits)
    torch.save(state, folder / "other.pth")
    with pytest.raises(RobustarchError, match=r"exactly one weight file in it, found other.pth, weights.pt"):
        _logits(folder, x)


def test_spec_prefix_and_key_rewrites() -> None:
    expected = ["features.denseblock1.denselayer1.norm1.weight", "classifier.weight"]
    legacy = {"backbone.features.denseblock1.denselayer1.norm.1.weight": 1, "backbone.classifier.weight": 2}
    spec = zoo.get_spec("densenet121", "imagenet")
    remapped = remap_keys(legacy, expected, prefix="backbone.", rewrites=spec.key_rewrites)  # type: ignore[arg-type]
    assert remapped == {expected[0]: 1, expected[1]: 2}
    # a prefix every key of the network itself carries is not stripped
    assert remap_keys({"net.a": 1}, ["net.a"]) == {"net.a": 1}  # type: ignore[dict-item]


def test_torchvision_style_densenet_file_loads(tmp_path: Path) -> None:
    """torchvision's DenseNet files use the pre-0.4 keys ``norm.1`` and predate ``num_batches_tracked``."""
    model = _randomize_(zoo.load("densenet121", "imagenet", width=4))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x)
    legacy = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
        for k, v in zoo.unwrap(model).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet.pth")
    again = zoo.load("densenet121", "imagenet", weights=tmp_path / "densenet.pth", width=4)
    with torch.no_grad():
        assert torch.equal(again(x), logits)


def test_wrong_checkpoint_reports_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    _, state, _ = _small_resnet()
    bad = dict(state)
    del bad["layer2.0.bn1.running_mean"]
    bad["layer9.0.conv1.weight"] = torch.zeros(1)
    bad["fc.weight"] = torch.zeros(100, 64)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(RobustarchError) as err:
        zoo.load("resnet18", "cifar10", weights=tmp_path / "bad.pt", width=8)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "layer2.0.bn1.running_mean" in msg
    assert "unexpected keys (1)" in msg and "layer9.0.conv1.weight" in msg
    assert "mis-shaped keys (1)" in msg and "fc.weight: checkpoint (100, 64) vs model (10, 64)" in msg


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.save(zoo.build("resnet50", "cifar10", width=8).state_dict(), tmp_path / "r50.pt")
    with pytest.raises(RobustarchError, match=r"missing keys|unexpected keys") as err:
        zoo.load("resnet18", "cifar10", weights=tmp_path / "r50.pt", width=8)
    assert "layer1.0.conv3.weight" in str(err.value)  # Bottleneck keys listed as unexpected


def test_report_is_bounded_for_large_mismatches() -> None:
    net = zoo.build("densenet121", "cifar10", width=4)
    # 727 entries, 121 of them num_batches_tracked (filled with 0 when absent, as torch does for old files)
    with pytest.raises(RobustarchError, match=r"missing keys \(606\)[\s\S]*and 586 more"):
        load_state_dict_strict(net, {"x": torch.zeros(1)})


class _Payload:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_code_is_refused_unless_the_caller_opts_in(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    _, state, _ = _small_resnet()
    torch.save({"state_dict": state, "hook": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RobustarchError, match="allow_pickle=True"):
        zoo.load("resnet18", "cifar10", weights=tmp_path / "evil.pt", width=8)
    assert not marker.exists()
    # a whole pickled module (class references, i.e. code) is also refused, and loads only on opt-in
    model, _, logits = _small_resnet()
    torch.save(zoo.unwrap(model), tmp_path / "module.pt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with pytest.raises(RobustarchError, match="refusing to load"):
        zoo.load("resnet18", "cifar10", weights=tmp_path / "module.pt", width=8)
    assert torch.equal(_logits(tmp_path / "module.pt", x, allow_pickle=True), logits)


def test_unreadable_or_stateless_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RobustarchError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(RobustarchError, match="expected a state_dict"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "nostate.pt")
    with pytest.raises(RobustarchError, match=r"no state_dict found. Top-level keys: epoch, optimizer"):
        read_checkpoint(tmp_path / "nostate.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RobustarchError, match=r"is a text file \(16 bytes\), not a checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(RobustarchError, match="JSON"):
        zoo.save_checkpoint(
            zoo.build("resnet18", "cifar10", width=8), tmp_path / "m.pt", metadata={"f": object()}
        )


def test_save_unwraps_and_hashes(tmp_path: Path) -> None:
    model, state, _ = _small_resnet()
    path = zoo.save_checkpoint(nn.DataParallel(model), tmp_path / "sub" / "dp.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == "robustarch-checkpoint" and saved["metadata"] == {}
    assert saved["state_dict"].keys() == state.keys()
    assert zoo.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(path.parent.glob("*.tmp"))
