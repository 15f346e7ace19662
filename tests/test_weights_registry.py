"""The weights registry as data: every entry names a real zoo model, a described source and a place the file
can come from; every entry's declared format, state_dict key and key prefix load strictly into its zoo entry
(files generated here in exactly that form); docs/weights.md is the registry's current table."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from robustarch import zoo
from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo import _weights_doc, weights
from robustarch.zoo._checkpoint import save_safetensors
from robustarch.zoo.densenas import QUICK_NET_CONFIG

REPO = Path(__file__).resolve().parents[1]
ENTRIES = weights.entries()
AVAILABLE = [e for e in ENTRIES if e.available]
IDS = [e.key for e in ENTRIES]
# what each kind of location needs
REQUIRED = {
    "url": ("url",),
    "drive": ("drive_id",),
    "drive-folder": ("drive_id",),
    "archive": ("archive", "member"),
    "none": (),
}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_is_well_formed(entry: weights.WeightEntry) -> None:
    spec = zoo.get_spec(entry.zoo_name, entry.dataset)  # a registered model for that dataset
    assert entry.dataset in ("cifar10", "cifar100", "imagenet")
    assert entry.source in weights.sources()
    assert entry.licence, "say 'none stated' when the source states none"
    for name in REQUIRED[entry.kind]:
        assert getattr(entry, name), f"a {entry.kind} entry needs {name}"
    if not entry.available:
        assert entry.notes and not (entry.url or entry.drive_id or entry.sha256), "say why there is no file"
        return
    assert entry.file and "/" not in entry.file
    if entry.archive:
        assert entry.archive in weights.archives()
    if entry.sha256:
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    if entry.sha256_prefix:  # torchvision: the name carries the prefix
        assert re.fullmatch(r"[0-9a-f]{8}", entry.sha256_prefix) and f"-{entry.sha256_prefix}." in entry.file
    assert (entry.format == "folder") == bool(entry.files)
    for value in (entry.top1, entry.top5):
        assert value is None or 0 < value < 100
    if entry.top1 is not None or entry.top5 is not None:
        assert entry.reported_by, "an accuracy needs the place it is reported"
    assert (entry.mean is None) == (entry.std is None)
    if entry.mean:
        assert len(entry.mean) == len(spec.mean_std(entry.dataset)[0])
    # the build overrides are arguments the zoo entry accepts
    zoo.build_kwargs(entry.zoo_name, entry.dataset, **entry.build_overrides(Path("/x")))


def test_one_default_per_model_and_dataset_and_unique_keys() -> None:
    pairs: dict[tuple[str, str], list[weights.WeightEntry]] = {}
    for e in ENTRIES:
        pairs.setdefault((e.model, e.dataset), []).append(e)
    for pair, group in pairs.items():
        assert sum(e.default for e in group) == 1, pair
        assert len({e.source for e in group}) == len(group), pair
    assert len({e.relpath for e in AVAILABLE}) == len(AVAILABLE)
    # every model the study evaluated has an entry (maybe "no public file") on each dataset it was run on
    for spec in zoo.list_specs(variants=False):
        for ds in ("cifar10", "cifar100") if spec.dataset_family == "cifar" else ("imagenet",):
            assert any(e.zoo_name == spec.name for e in weights.entries(ds)), (spec.name, ds)


def test_lookup_by_source_alias_default_and_errors() -> None:
    tv = weights.lookup("resnet18", "imagenet", "torchvision")
    assert weights.lookup("resnet18", "imagenet") == tv == weights.lookup("resnet18", "imagenet", True)
    assert weights.lookup("resnet18", "imagenet", "IMAGENET1K_V1") == tv
    assert weights.lookup("resnet18", "cifar10-jpeg").dataset == "cifar10"  # the same images
    with pytest.raises(UnknownNameError, match="Did you mean 'torchvision'"):
        weights.lookup("resnet18", "imagenet", "torchvison")
    with pytest.raises(weights.WeightsError, match="densenas_large, densenas_r1"):
        weights.lookup("densenas", "imagenet")
    with pytest.raises(weights.WeightsError, match="no published weights"):
        weights.lookup("resnet18", "fashion-mnist")
    with pytest.raises(weights.WeightsError, match=r"no public file.*fastai"):
        zoo.load("vgg16_bn", "cifar100", weights=True)
    with pytest.raises(RobustarchError, match="no pretrained= argument"):
        zoo.load("resnet18", "imagenet", pretrained=True)
    with pytest.raises(RobustarchError, match="weights must be"):
        zoo.load("resnet18", "imagenet", weights=3)  # type: ignore[arg-type]
    with pytest.raises(RobustarchError, match="checkpoint file not found"):
        zoo.load("resnet18", "imagenet", weights="~/nowhere/resnet18.pth")


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in zoo.unwrap(model).state_dict().items():
            if t.is_floating_point():
                fill = torch.rand(t.shape, generator=gen) * 0.2 + 0.9 if key.endswith("running_var") else None
                t.copy_(fill if fill is not None else torch.randn(t.shape, generator=gen) * 0.1)


def _as_published(entry: weights.WeightEntry, state: dict[str, torch.Tensor]) -> object:
    """``state`` in the form the entry declares: key style, key prefix, container key."""
    if entry.key_style == "densenet-legacy":
        # torchvision's 2017 DenseNet files: norm.1 for norm1, and (saved before PyTorch 0.4.1) no
        # num_batches_tracked
        legacy = r"(denselayer\d+\.(?:norm|relu|conv))([12])\."
        state = {re.sub(legacy, r"\1.\2.", k): v for k, v in state.items() if "num_batches" not in k}
    state = {entry.key_prefix + k: v for k, v in state.items()}
    return {entry.state_dict_key: state, "epoch": 1} if entry.state_dict_key else state


def _write(entry: weights.WeightEntry, state: dict[str, torch.Tensor], target: Path) -> None:
    obj = _as_published(entry, state)
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.format == "safetensors":
        assert isinstance(obj, dict) and not entry.state_dict_key
        save_safetensors(obj, target)  # type: ignore[arg-type]
    elif entry.format == "folder":
        target.mkdir()
        (target / "net_config").write_text(QUICK_NET_CONFIG + "\nnet_type: mbv2\n")
        torch.save(obj, target / "weights.pt")
        assert sorted(p.name for p in target.iterdir()) == sorted(entry.files)
    else:
        torch.save(obj, target)


@pytest.mark.parametrize("entry", AVAILABLE, ids=[e.key for e in AVAILABLE])
def test_every_entry_loads_strictly_in_its_published_form(
    entry: weights.WeightEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in the entry's declared format (its state_dict key, key prefix, key style) is found in a mirror
    folder, loads strictly through zoo.load(..., weights=<source>) and gives the logits of the network it came
    from, built with the entry's overrides and normalized with the entry's statistics."""
    # generated files cannot have the published hashes: check them on first use instead
    unpinned = replace(entry, sha256=None, sha256_prefix=None)
    data = dict(weights._registry())
    data["entries"] = tuple(unpinned if e == entry else e for e in data["entries"])
    monkeypatch.setattr(weights, "_registry", lambda: data)
    monkeypatch.setenv("ROBUSTARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROBUSTARCH_WEIGHTS_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("ROBUSTARCH_OFFLINE", "1")  # a local mirror folder is not network

    spec = zoo.get_spec(entry.zoo_name, entry.dataset)
    small = {} if entry.format == "folder" else dict(spec.quick_overrides)
    folder_overrides = {"net_config": QUICK_NET_CONFIG} if "net_config" in entry.overrides else {}
    overrides = {**entry.build_overrides(Path("unused")), **small, **folder_overrides}
    original = zoo.build(entry.zoo_name, entry.dataset, **overrides)
    _randomize_(original, seed=len(entry.key))
    _write(entry, original.state_dict(), tmp_path / "mirror" / entry.relpath)

    model = zoo.load(entry.model, entry.dataset, weights=entry.source, **small)
    assert model.weights_entry == unpinned
    size = spec.input_size
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    mean, std = entry.normalization() or spec.mean_std(entry.dataset)
    original.eval()
    with torch.no_grad():
        expected = original((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1))
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=1e-5)


def test_stem_pool_override_changes_the_network() -> None:
    """The edadaltocg override is not cosmetic: without the max-pool the same weights compute otherwise."""
    entry = weights.lookup("resnet18", "cifar10", "hf-edadaltocg")
    assert entry.overrides == {"stem_pool": False}
    with_pool = zoo.build("resnet18", "cifar10", width=8)
    without = zoo.build("resnet18", "cifar10", width=8, stem_pool=False)
    without.load_state_dict(with_pool.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 32)
    with_pool.eval(), without.eval()
    with torch.no_grad():
        assert not torch.allclose(with_pool(x), without(x))


def test_docs_weights_md_is_the_registry_table() -> None:
    doc = (REPO / "docs" / "weights.md").read_text(encoding="utf-8")
    assert _weights_doc.replace_section(doc) == doc, (
        "docs/weights.md is stale: run python -m robustarch.zoo._weights_doc docs/weights.md"
    )
    for entry in AVAILABLE:
        assert f"`{entry.file}`" in doc


def test_study_weights_of_the_bundled_paper_study() -> None:
    requests = weights.study_weights("paper")
    named = {(r.dataset, r.model_id): r for r in requests}
    assert len(named) == len(requests) == 9 + 9 + 15
    # ImageNet handcrafted from torchvision, DenseNAS from the authors' folders
    assert named[("imagenet", "resnet50")].entry == weights.lookup("resnet50", "imagenet", "torchvision")
    assert named[("imagenet", "densenas_r3")].entry == weights.lookup("densenas_r3", "imagenet", "authors")
    handcrafted = {"vgg16_bn", "resnet18", "resnet50", "densenet121", "densenet169"}
    for r in requests:
        if (
            r.entry is None
        ):  # a local file: the study's CIFAR-100 handcrafted nets have no loadable public file
            assert r.dataset == "cifar100" and r.model_id in handcrafted
            assert not weights.lookup(r.model_id, r.dataset, "study").available
        else:
            assert r.entry.available and r.entry.dataset == r.dataset
