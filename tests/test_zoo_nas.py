"""NAS families of the zoo: genotypes as data, the training-mode contract (auxiliary head, drop path), small
variants, and DenseNAS built from the authors' model-folder format for both search spaces.

Layout/parameter/logit conformance with the authors' code is checked over every fixture by
``test_zoo_conformance.py``; this file tests behaviour the fixtures cannot see (training mode, overrides,
net_config files, the ResNet-based DenseNAS space whose published configs are not public).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import shared_path
from robustarch import zoo
from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo import densenas, genotypes
from robustarch.zoo.darts import Cell, NetworkCIFAR, NetworkImageNet
from robustarch.zoo.genotypes import Genotype
from robustarch.zoo.operations import OPS, Identity, drop_path

NAS_SPECS = [s for s in zoo.list_specs() if s.family == "nas"]
DATASET_OF = {"cifar": "cifar10", "imagenet": "imagenet"}
# entries with an auxiliary head by default (DARTS family and NSGA-Net, as published)
AUX_SPECS = [s for s in NAS_SPECS if s.arch_kwargs(DATASET_OF[s.dataset_family]).get("auxiliary")]
CELL_NETS = sorted({s.name for s in AUX_SPECS})


def _ids(specs):
    return [f"{s.name}-{s.dataset_family}" for s in specs]


def _quick(name, dataset, **changes):
    return {**zoo.get_spec(name, dataset).quick_overrides, **changes}


def _input(net, n=2, seed=0):
    # DARTS-family ImageNet nets end in a fixed AvgPool2d(7) and need 224x224; the others pool adaptively
    size = 224 if isinstance(net, NetworkImageNet) else 32
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ genotypes


@pytest.mark.parametrize("name", genotypes.genotype_names())
def test_genotype_string_round_trip_and_validity(name):
    g = genotypes.get_genotype(name)
    assert Genotype.from_string(str(g)) == g
    assert g.validate() is g
    ops = {op for op, _ in (*g.normal, *g.reduce)}
    assert ops <= set(OPS)
    assert genotypes.genotype_source(name)["repo"]


def test_genotype_parses_the_authors_notation():
    text = (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
        "('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
        "('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
    )
    assert Genotype.from_string(text) == genotypes.get_genotype("DARTS")
    # a string is accepted wherever a genotype is
    net = zoo.build("darts", "cifar10", C=4, layers=3, auxiliary=False, genotype=text)
    assert isinstance(net, NetworkCIFAR)


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda g: {**g, "normal": [("sep_conv_3x4", 0), *g["normal"][1:]]}, UnknownNameError),
        (
            lambda g: {**g, "normal": [*g["normal"][:2], ("sep_conv_3x3", 3), *g["normal"][3:]]},
            RobustarchError,
        ),
        (lambda g: {**g, "reduce": g["reduce"][:-1]}, RobustarchError),
        (lambda g: {**g, "reduce_concat": [2, 3, 6]}, RobustarchError),
    ],
    ids=["unknown-op", "future-input", "odd-edges", "bad-concat"],
)
def test_invalid_genotypes_are_rejected(edit, error):
    g = genotypes.get_genotype("PDARTS")
    fields = edit(
        {"normal": list(g.normal), "normal_concat": g.normal_concat, "reduce": list(g.reduce),
         "reduce_concat": g.reduce_concat}
    )  # fmt: skip
    with pytest.raises(error):
        Genotype(**fields).validate()
    with pytest.raises(error):
        Genotype.from_string(str(Genotype(**fields)))


def test_unknown_op_suggests_close_names():
    with pytest.raises(UnknownNameError, match="sep_conv_3x3"):
        Genotype(
            [("sep_conv_3x4", 0), ("skip_connect", 1)], [2], [("max_pool_3x3", 0), ("skip_connect", 1)], [2]
        ).validate()


def test_genotype_strings_never_execute_code():
    with pytest.raises(RobustarchError):
        Genotype.from_string(
            "Genotype(normal=__import__('os').getcwd(), normal_concat=[2], reduce=[], reduce_concat=[])"
        )


ROBUST_CELLS = {"advrush": "ADVRUSH", "racl": "RACL", "e2rnas": "E2RNAS"}


@pytest.mark.parametrize("name", genotypes.genotype_names())
def test_genotype_json_round_trip(name, tmp_path):
    """dict and file forms give back the same genotype; the file is what robustarch search writes."""
    g = genotypes.get_genotype(name)
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    path = genotypes.save_genotype_file(tmp_path / "genotype.json", g, search={"note": "test"})
    assert genotypes.load_genotype_file(path) == g
    assert genotypes.as_genotype(str(path)) == g and genotypes.as_genotype(path) == g
    assert json.loads(path.read_text())["string"] == str(g)
    assert genotypes.genotype_citation(name)


@pytest.mark.parametrize(("model", "name"), sorted(ROBUST_CELLS.items()))
def test_robust_cells_are_darts_networks_with_their_citation(model, name):
    spec = zoo.get_spec(model, "cifar10")
    assert spec.paper == genotypes.genotype_citation(name)
    assert spec.arch_kwargs("cifar10")["genotype"] == name
    source = genotypes.genotype_source(name)
    assert {"repo", "commit", "file", "line", "name"} <= set(source) and len(source["commit"]) == 40
    net = zoo.build(model, "cifar10", **spec.quick_overrides)
    plain = zoo.build("darts", "cifar10", genotype=name, auxiliary=False, **spec.quick_overrides)
    assert {k: v.shape for k, v in net.state_dict().items() if "auxiliary" not in k} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    with pytest.raises(UnknownNameError):
        zoo.get_spec(model, "imagenet")  # no ImageNet cell was published


def test_width_matched_variants_scale_the_parameter_count():
    small = zoo.count_parameters(zoo.build("advrush", "cifar10", C=8, layers=8))
    wide = zoo.count_parameters(zoo.build("advrush", "cifar10", C=16, layers=8))
    assert 3.0 < wide / small < 4.5  # separable convolutions: the count grows about as C**2


def test_genotype_file_is_accepted_wherever_a_genotype_is(tmp_path):
    path = genotypes.save_genotype_file(tmp_path / "g.json", genotypes.get_genotype("RACL"))
    from_file = zoo.build("darts", "cifar10", C=4, layers=3, auxiliary=False, genotype=str(path))
    named = zoo.build("darts", "cifar10", C=4, layers=3, auxiliary=False, genotype="RACL")
    assert from_file.state_dict().keys() == named.state_dict().keys()
    # the four fields alone (no "genotype" wrapper) are a genotype file too
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(genotypes.get_genotype("RACL").to_dict()))
    assert genotypes.load_genotype_file(bare) == genotypes.get_genotype("RACL")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "cannot read"),
        ('{"genotype": {"normal": []}}', "exactly the fields"),
        (
            '{"normal": [["sep_conv_3x4", 0], ["skip_connect", 1]], "normal_concat": [2], '
            '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
            "sep_conv_3x3",
        ),
    ],
    ids=["missing", "not-json", "missing-fields", "unknown-op"],
)
def test_bad_genotype_files_are_explained(tmp_path, content, match):
    path = tmp_path / "g.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RobustarchError, match=match):
        zoo.build("darts", "cifar10", C=4, layers=3, genotype=str(path))


def test_abanditnas_is_recorded_but_not_a_darts_genotype():
    with pytest.raises(RobustarchError, match=r"not a DARTS-space genotype.*Gabor"):
        genotypes.get_genotype("ABanditNAS")
    assert "ABanditNAS" not in genotypes.genotype_names()
    assert "abanditnas" not in zoo.list_models()


def test_packaged_architectures_equal_the_fixtures():
    shared = json.loads(shared_path("conformance", "architectures.json").read_text())
    assert json.loads(genotypes.ARCHITECTURES_FILE.read_text()) == shared


def test_non_public_densenas_configs_explain_themselves():
    assert {"DenseNAS-Large", "DenseNAS-R1", "DenseNAS-R2", "DenseNAS-R3"} <= set(genotypes.densenas_names())
    with pytest.raises(RobustarchError, match="not public"):
        genotypes.get_densenas_config("DenseNAS-R2")


# ------------------------------------------------------------------------------- the training contract


@pytest.mark.parametrize("spec", NAS_SPECS, ids=_ids(NAS_SPECS))
def test_small_variant_training_contract(spec):
    """Small variants build; training mode returns (logits, logits_aux) when the model has an auxiliary
    head and gradients reach every parameter; eval mode returns one logits tensor."""
    dataset = DATASET_OF[spec.dataset_family]
    num_classes = zoo.DATASETS[dataset].num_classes
    small = spec.quick_overrides
    torch.manual_seed(0)
    net = zoo.build(spec.name, dataset, **small)
    if "layers" in small:
        assert len(net.cells) == small["layers"]
    x = _input(net)
    out = net.train()(x)
    if spec in AUX_SPECS:
        assert isinstance(out, tuple) and len(out) == 2
        logits, logits_aux = out
        assert logits_aux.shape == (2, num_classes)
        loss = logits.logsumexp(1).mean() + 0.4 * logits_aux.logsumexp(1).mean()
    else:
        assert isinstance(out, torch.Tensor)
        logits, loss = out, out.logsumexp(1).mean()
    assert logits.shape == (2, num_classes)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, num_classes) and torch.isfinite(y).all()


@pytest.mark.parametrize("spec", AUX_SPECS, ids=_ids(AUX_SPECS))
def test_without_auxiliary_head_training_returns_logits(spec):
    dataset = DATASET_OF[spec.dataset_family]
    plain = zoo.build(spec.name, dataset, **_quick(spec.name, dataset, layers=3, auxiliary=False)).train()
    assert not any("auxiliary" in k for k in plain.state_dict())
    with torch.no_grad():
        assert isinstance(plain(_input(plain)), torch.Tensor)


def test_imagenet_auxiliary_head_batchnorm_only_in_pdarts():
    keys = {
        name: set(zoo.build(name, "imagenet", C=8, layers=3).state_dict())
        for name in CELL_NETS
        if name in zoo.list_models("imagenet")
    }
    assert "auxiliary_head.features.6.weight" in keys["pdarts"]
    assert "auxiliary_head.features.6.weight" not in keys["darts"]
    assert "auxiliary_head.features.6.weight" not in keys["pc_darts"]


@pytest.mark.parametrize(("name", "attr"), [("pdarts", "drop_path_prob"), ("nsga_net", "droprate")])
def test_drop_path_acts_only_in_training(name, attr):
    torch.manual_seed(0)
    net = zoo.build(name, "cifar10", **_quick(name, "cifar10", layers=3, auxiliary=False))
    assert getattr(net, attr) == 0.0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    net.eval()
    with torch.no_grad():
        ref = net(x)
        setattr(net, attr, 0.7)
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)
    net.train()
    with torch.no_grad():
        setattr(net, attr, 0.0)
        no_drop = net(x)
        torch.testing.assert_close(net(x), no_drop)  # deterministic without drop path
        setattr(net, attr, 0.7)
        torch.manual_seed(3)
        dropped = net(x)
    assert not torch.allclose(dropped, no_drop)


def test_drop_path_drops_whole_samples_and_rescales():
    x = torch.ones(2000, 3, 2, 2, dtype=torch.float64)
    out = drop_path(x, 0.25, generator=torch.Generator().manual_seed(0))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 1.0 / 0.75}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)  # whole samples
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.05
    assert drop_path(x, 0.0) is x


def test_identity_edges_are_never_dropped():
    skip_only = Genotype(
        [("skip_connect", 0), ("skip_connect", 1)], [2], [("skip_connect", 0), ("skip_connect", 1)], [2]
    )
    cell = Cell(skip_only, 4, 4, 4, reduction=False, reduction_prev=False).train()
    assert all(isinstance(op, Identity) for op in cell._ops)
    s = torch.rand(3, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(cell(s, s, 0.9), cell(s, s, 0.0))


# ------------------------------------------------------------------------------------- small variants


def test_imagenet_cell_network_rejects_other_input_sizes():
    net = zoo.build("darts", "imagenet", **_quick("darts", "imagenet")).eval()
    with torch.no_grad(), pytest.raises(RobustarchError, match="224x224"):
        net(torch.rand(1, 3, 256, 256))


@pytest.mark.parametrize("name", CELL_NETS)
def test_fashion_mnist_models_take_one_channel(name):
    net = zoo.load(name, "fashion-mnist", **_quick(name, "fashion-mnist"))
    assert net.net.stem[0].in_channels == 1
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    out = net.train()(torch.rand(2, 1, 28, 28))
    assert isinstance(out, torch.Tensor)  # no auxiliary head by default on 28x28 inputs


def test_nsga_net_widths_differ_per_dataset():
    c10 = zoo.build("nsga_net", "cifar10").state_dict()
    c100 = zoo.build("nsga_net", "cifar100").state_dict()
    assert c10["cells.0.preprocess1.op.1.weight"].shape[0] == 26
    assert c100["cells.0.preprocess1.op.1.weight"].shape[0] == 36
    assert c10["cells.19.preprocess1.op.1.weight"].shape[0] == 26 + 19 * 4
    assert (
        zoo.build("nsga_net", "cifar10-jpeg").state_dict()["classifier.weight"].shape
        == c10["classifier.weight"].shape
    )


# --------------------------------------------------------------------------------------------- DenseNAS

# A small ResNet-space config written for the tests (the published R1-R3 configs are not public): a
# widening skip head, basic blocks with and without projection, a bottleneck fed by the 32-wide stem width
# (not widened) and one fed by a bottleneck (widened x4).
RES_CONFIG = (
    "[[32, 48], 'basic_block', ['basic_block', 'skip_connect'], 2, 2]|\n"
    "[[48, 56], 'skip_connect', ['basic_block'], 1, 1]|\n"
    "[[56, 32], 'basic_block', [], 0, 2]|\n"
    "[[32, 16], 'bottle_neck', ['bottle_neck'], 1, 2]"
)


def _write_folder(path, net_config, net_type, state_dict):
    path.mkdir()
    (path / "net_config").write_text(net_config + "\nnet_type: " + net_type + "\n")
    torch.save({f"module.{k}": v for k, v in state_dict.items()}, path / "weights.pt")
    return path


def test_densenas_from_the_authors_model_folder(tmp_path):
    cfg = genotypes.get_densenas_config("DenseNAS-C")
    torch.manual_seed(0)
    trained = zoo.build("densenas_c", "imagenet")
    with torch.no_grad():  # make BN statistics non-trivial, as in released weights
        for m in trained.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    folder = _write_folder(tmp_path / "DenseNAS-C", cfg.net_config, "mbv2", trained.state_dict())

    model = zoo.load("densenas", "imagenet", weights=densenas.model_folder_weights(folder), net_config=folder)
    assert isinstance(model.net, densenas.MBV2_Net)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = zoo.load("densenas_c", "imagenet")
    reference.net.load_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    # the string and the file give the same network as the named entry
    for source in (cfg.net_config, folder / "net_config"):
        built = zoo.build("densenas", "imagenet", net_config=source)
        assert {k: v.shape for k, v in built.state_dict().items()} == {
            k: v.shape for k, v in trained.state_dict().items()
        }


def test_densenas_batchnorm_eps_and_runtime_residual():
    mb = zoo.build("densenas_a", "imagenet")
    assert {m.eps for m in mb.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    res = zoo.build("densenas", "imagenet", net_config=RES_CONFIG)
    assert {m.eps for m in res.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}

    first = mb.blocks[0].head_layer  # [16, 16] mbconv_k3_t1: no expansion conv, residual at run time
    assert first._expand_conv is None
    assert not any(k.startswith("blocks.0.head_layer._expand_conv") for k in mb.state_dict())
    with torch.no_grad():
        first._project_conv[1].weight.zero_()
        first._project_conv[1].bias.zero_()
        x = torch.rand(1, 16, 8, 8)
        torch.testing.assert_close(first.eval()(x), x)  # the branch is zero, so only the residual is left
        second = mb.blocks[1].head_layer  # 16 -> 24, stride 2: no residual
        assert second(torch.rand(1, 16, 8, 8)).shape == (1, 24, 4, 4)


def test_densenas_resnet_space_from_a_folder(tmp_path):
    torch.manual_seed(0)
    net = zoo.build("densenas", "imagenet", net_config=RES_CONFIG)
    assert isinstance(net, densenas.RES_Net)  # inferred from the ops
    sd = net.state_dict()
    assert sd["blocks.1.head_layer.op.0.0.weight"].shape == (56, 48, 1, 1)  # widening skip
    assert "blocks.0.stack_layers.1.op.0.0.weight" not in sd  # same-width skip has no parameters
    assert sd["blocks.3.head_layer.conv1.weight"].shape == (16, 32, 1, 1)  # 32 is not widened
    assert sd["blocks.3.stack_layers.0.conv1.weight"].shape == (16, 64, 1, 1)  # 16 -> 16*4 input
    assert "blocks.3.stack_layers.0.downsample.0.weight" not in sd
    assert sd["classifier.weight"].shape == (1000, 64)
    x = torch.rand(2, 3, 64, 64)
    net(x).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in net.parameters())

    folder = _write_folder(tmp_path / "DenseNAS-R0", RES_CONFIG, "res", net.state_dict())
    model = zoo.load("densenas", "imagenet", weights=folder / "weights.pt", net_config=folder)
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), net.eval()(x), rtol=0, atol=0)


def test_densenas_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(RobustarchError, match="net_config="):
        zoo.build("densenas", "imagenet")
    with pytest.raises(RobustarchError, match="neither"):
        zoo.build("densenas", "imagenet", net_config=tmp_path / "missing")
    with pytest.raises(UnknownNameError, match="mbconv_k3_t6"):
        zoo.build(
            "densenas", "imagenet", net_config="[[16, 24], 'mbconv_k3_t7', [], 0, 2]|[[24, 64], 'conv1_1']"
        )
    with pytest.raises(RobustarchError, match="contradicts"):
        folder = _write_folder(tmp_path / "m", RES_CONFIG, "res", {})
        zoo.build("densenas", "imagenet", net_config=folder, net_type="mbv2")
    with pytest.raises(RobustarchError, match="literal"):
        densenas.parse_net_config("[[16, 16], 'mbconv_k3_t1', [], 0, 1]|__import__('os')")
