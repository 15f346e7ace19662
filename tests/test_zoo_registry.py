"""The registry and the model contract, over every registered entry: the facts each entry records, build /
load / list_models, close-name suggestions, and load()'s [0, 1]-input, normalizing, eval-mode model."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from robustarch import zoo
from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo import Normalized
from robustarch.zoo._registry import DATASETS, stored_parameter_counts

STUDY_CIFAR = {
    "vgg16_bn",
    "resnet18",
    "resnet50",
    "densenet121",
    "densenet169",
    "darts",
    "pdarts",
    "pc_darts",
    "nsga_net",
}
STUDY_IMAGENET = STUDY_CIFAR - {"nsga_net"} | {"densenas_a", "densenas_b", "densenas_c"}
SPECS = zoo.list_specs()
SPEC_IDS = [f"{s.name}-{s.dataset_family}" for s in SPECS]
# every (entry, dataset) pair the registry can build for
PAIRS = [(s, d) for s in SPECS for d, shape in DATASETS.items() if shape.family == s.dataset_family]
PAIR_IDS = [f"{s.name}-{d}" for s, d in PAIRS]


def test_the_study_models_are_registered() -> None:
    for dataset in ("cifar10", "cifar100", "cifar10-jpeg"):
        assert set(zoo.list_models(dataset, variants=False)) >= STUDY_CIFAR
    assert set(zoo.list_models("imagenet", variants=False)) >= STUDY_IMAGENET
    assert zoo.list_models("cifar10-jpeg") == zoo.list_models("cifar10")
    assert set(zoo.list_models()) == {s.name for s in SPECS}
    assert "vgg16_bn_head2021" in zoo.list_models("cifar10")
    assert "vgg16_bn_head2021" not in zoo.list_models("cifar10", variants=False)
    assert zoo.list_models() == sorted(zoo.list_models())


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_entry_records_its_facts(spec: zoo.ModelSpec) -> None:
    assert spec.family in ("handcrafted", "nas")
    for text in (spec.method, spec.paper, spec.reference, spec.weights):
        assert isinstance(text, str) and text.strip()
    assert "@" in spec.reference, "reference must name repo@commit"
    assert spec.input_size == (32 if spec.dataset_family == "cifar" else 224)
    if spec.variant_of:
        assert spec.variant_of in zoo.list_models(), spec.variant_of


@pytest.mark.parametrize(("spec", "dataset"), PAIRS, ids=PAIR_IDS)
def test_mean_std_fit_every_dataset(spec: zoo.ModelSpec, dataset: str) -> None:
    mean, std = spec.mean_std(dataset)
    assert len(mean) == len(std) == DATASETS[dataset].in_channels
    assert all(0 < m < 1 for m in mean) and all(0 < s < 1 for s in std)


@pytest.mark.parametrize(("spec", "dataset"), PAIRS, ids=PAIR_IDS)
def test_load_takes_unit_range_images_and_normalizes_inside(spec: zoo.ModelSpec, dataset: str) -> None:
    shape = DATASETS[dataset]
    torch.manual_seed(0)
    model = zoo.load(spec.name, dataset, **spec.quick_overrides)
    assert isinstance(model, Normalized) and not model.training
    assert all(not m.training for m in model.modules())
    assert model.spec is spec
    x = torch.rand(2, shape.in_channels, shape.input_size, shape.input_size)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor), "forward must return one logits tensor"
        assert out.shape == (2, shape.num_classes) and torch.isfinite(out).all()
        # the same as feeding the bare network the normalized input; 28x28 images are zero-padded to 32x32
        # in [0, 1] space, i.e. before normalization
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in spec.mean_std(dataset))
        pad = (spec.input_size - shape.input_size) // 2
        manual = zoo.unwrap(model)((torch.nn.functional.pad(x, [pad] * 4) - mean) / std)
    torch.testing.assert_close(out, manual)
    # no normalization statistic enters the checkpoint
    assert set(model.state_dict()) == {f"net.{k}" for k in zoo.unwrap(model).state_dict()}


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_build_returns_the_bare_network(spec: zoo.ModelSpec) -> None:
    dataset = "cifar10" if spec.dataset_family == "cifar" else "imagenet"
    net = zoo.build(spec.name, dataset, **spec.quick_overrides)
    assert not isinstance(net, Normalized) and zoo.unwrap(net) is net
    assert net.training  # like any freshly built nn.Module
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # the stored parameter counts are taken on the meta device: it builds the same parameters
    with torch.device("meta"):
        on_meta = zoo.build(spec.name, dataset, **spec.quick_overrides)
    assert zoo.count_parameters(on_meta) == zoo.count_parameters(net) > 0


REGENERATE = 'python -c "from robustarch import zoo; zoo.write_parameter_counts()"'


@pytest.mark.parametrize(("spec", "dataset"), PAIRS, ids=PAIR_IDS)
def test_stored_parameter_counts_are_current(spec: zoo.ModelSpec, dataset: str) -> None:
    """``robustarch models`` reads the counts from configs/parameter_counts.json; each is recomputed here
    from the network the registry builds, so the file cannot go stale."""
    stored = stored_parameter_counts()[dataset].get(spec.name, "missing")
    try:
        with torch.device("meta"):
            built: int | None = zoo.count_parameters(zoo.build(spec.name, dataset))
    except RobustarchError:  # needs arguments to build: stored as null
        built = None
    assert stored == built, f"{spec.name}/{dataset}: stored {stored}, built {built}; run {REGENERATE}"
    assert zoo.parameter_count(spec.name, dataset) == built


def test_the_counts_file_lists_exactly_the_registry() -> None:
    stored = {(name, d) for d, counts in stored_parameter_counts().items() for name in counts}
    assert stored == {(s.name, d) for s, d in PAIRS}, f"run {REGENERATE}"


def test_an_entry_without_a_stored_count_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model registered after the file was written (a user's own entry) still gets its count."""
    monkeypatch.setattr(zoo, "stored_parameter_counts", dict)
    assert zoo.parameter_count("vgg16_bn", "imagenet") == 138_365_992  # torchvision's documented count
    assert zoo.parameter_count("densenas", "imagenet") is None
    with pytest.raises(UnknownNameError, match="resnet18"):
        zoo.parameter_count("resnet19", "cifar10")


def test_load_rejects_images_of_the_wrong_shape() -> None:
    model = zoo.load("resnet18", "cifar10", width=8)
    with pytest.raises(RobustarchError, match=r"\[N, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(RobustarchError, match=r"\[N, 3, H, W\]"):
        model(torch.rand(3, 32, 32))


def test_fashion_mnist_networks_take_one_channel_28x28_images() -> None:
    model = zoo.load("vgg16_bn", "fashion-mnist", width=8)
    assert model.pad_to == 32 and zoo.unwrap(model).features[0].in_channels == 1
    with torch.no_grad():
        assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_unknown_names_suggest_close_names() -> None:
    with pytest.raises(UnknownNameError, match="resnet18") as err:
        zoo.build("resnet19", "cifar10")
    assert "Did you mean" in str(err.value)
    with pytest.raises(UnknownNameError, match="cifar10"):
        zoo.build("resnet18", "cifar-10")
    with pytest.raises(UnknownNameError, match="densenas_a"):
        zoo.get_spec("densenas_a", "cifar10")  # ImageNet-only model: the message lists what CIFAR has
    with pytest.raises(UnknownNameError, match="'width'"):
        zoo.build("resnet18", "cifar10", widht=8)
    with pytest.raises(UnknownNameError, match="vgg16_bn"):
        zoo.load("vgg16bn", "imagenet")


def test_overrides_change_width_and_depth() -> None:
    small = zoo.build("resnet18", "cifar10", width=8)
    assert small.conv1.out_channels == 8 and small.fc.in_features == 64
    deeper = zoo.build("resnet18", "cifar10", width=8, layers=(3, 4, 6, 3))  # ResNet-34 layout
    assert len(deeper.layer3) == 6
    assert zoo.build("vgg16_bn", "cifar10", width=8, cfg="A").features[0].out_channels == 8
    dn = zoo.build("densenet121", "imagenet", width=4)
    assert dn.features.conv0.out_channels == 8 and dn.features.conv0.kernel_size == (7, 7)
    with pytest.raises(RobustarchError, match="VGG configuration"):
        zoo.build("vgg16_bn", "cifar10", cfg="Z")
    assert zoo.build("resnet18", "cifar10", width=8, num_classes=7).fc.out_features == 7


def test_cli_lists_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    from robustarch.cli import models as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["models", "--dataset", "imagenet"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "dataset", "family", "params"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(zoo.list_models("imagenet"))
    assert rows["vgg16_bn"][1:4] == ["imagenet", "handcrafted", "138.37"]
    assert "pytorch/vision@f122815" in " ".join(rows["resnet50"])
    args = parser.parse_args(["models", "--dataset", "cifar-10"])
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar10'"):
        args.func(args)


def test_cli_listing_builds_no_network(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from robustarch.cli import models as cli

    def refuse(*args, **kwargs):
        raise AssertionError("robustarch models built a network")

    monkeypatch.setattr(zoo, "build", refuse)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    for argv in (["models"], ["models", "--dataset", "fashion-mnist"], ["models", "--no-variants"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "densenas  " in out and "(args)" in out  # the generic DenseNAS entry needs a net_config


def test_importing_the_zoo_costs_no_torch_until_a_network_is_needed() -> None:
    """The dataset table is free to read; the registry imports the architecture files (and torch) when
    first read, also through the private module that other code may import directly."""
    code = (
        "import sys\n"
        "import robustarch.zoo as zoo\n"
        "assert zoo.DATASETS['imagenet'].num_classes == zoo.dataset_shape('imagenet').num_classes == 1000\n"
        "assert 'torch' not in sys.modules, 'the dataset table imported torch'\n"
        "from robustarch.zoo._registry import get_spec\n"
        "assert get_spec('resnet18', 'cifar10').reference.startswith('huyvnphan/PyTorch_CIFAR10@')\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
