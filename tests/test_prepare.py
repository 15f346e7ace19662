"""``robustarch.runtime.prepare_for_attack``: the tolerance relative to the logits' scale, every transform
that really changes the output rejected with its reason, the probe batch that bounds the cost, and the
record it returns. (Logit and gradient agreement on a CIFAR ResNet-18: ``tests/test_attacks.py``.)"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from torch import Tensor, nn

from robustarch import zoo
from robustarch.errors import RobustarchError
from robustarch.runtime import TRANSFORMS, prepare_for_attack
from robustarch.runtime import prepare as prepare_module

TRANSFORM_NAMES = [t.name for t in TRANSFORMS]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics, as trained ones are, so folding changes the arithmetic."""
    g = gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)


class SmallNet(nn.Module):
    """Every transform applies: Conv2d + BatchNorm2d pairs to fold, and a 3x3 convolution on a 2x2 map."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, 16, 2), block(16, 16, 2), block(16, 32, 1))  # 8x8 -> 2x2
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture
def small() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = SmallNet().eval()
    randomize_batchnorm(model)
    return model, torch.rand(16, 3, 8, 8, generator=gen(1))


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def test_every_transform_is_kept_on_a_model_they_all_fit(small) -> None:
    model, x = small
    prepared, info = prepare_for_attack(model, x)
    assert [c.transform for c in info.checks] == TRANSFORM_NAMES
    assert all(c.kept and c.count > 0 and c.reason == "" for c in info.checks), info
    assert (info.folded_batchnorm, info.channels_last, info.dense_convolutions) == (3, True, 1)
    assert info.rejected == ()
    reference = logits(model, x[:4])
    assert info.logit_scale == pytest.approx(float(reference.abs().max()))
    assert info.tolerance == pytest.approx(1e-4 * info.logit_scale + 1e-5)
    assert 0 <= info.max_abs_logit_diff <= info.tolerance
    # within the tolerance on the examples the probe did not see, too
    assert float((logits(prepared, x) - logits(model, x)).abs().max()) <= info.tolerance


def test_a_resnet50_scale_model_gets_folded() -> None:
    """The ImageNet ResNet-50: logits in the tens, 53 BatchNorms. The former absolute tolerance of 1e-5
    rejected every transform here (folding moved such logits by 3e-5-5e-5, a few float32 ulps)."""
    torch.manual_seed(0)
    model = zoo.load("resnet50", "imagenet")
    randomize_batchnorm(model)
    x = torch.rand(6, 3, 224, 224, generator=gen(2))
    prepared, info = prepare_for_attack(model, x)
    assert info.logit_scale > 30, "the case needs logits of a trained ResNet-50's scale"
    assert info.folded_batchnorm == 53 and info.channels_last, info
    assert 0 < info.max_abs_logit_diff <= info.tolerance  # folding did change the arithmetic
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    unseen = x[info.probe_examples :]
    assert float((logits(prepared, unseen) - logits(model, unseen)).abs().max()) <= info.tolerance


class _Shifted(nn.Module):
    """The wrapped model's logits plus a constant: a transform that really changes the output by ``by``."""

    def __init__(self, model: nn.Module, by: float) -> None:
        super().__init__()
        self.model, self.by = model, by

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) + self.by


def _corrupted(name: str, by: float) -> tuple[prepare_module.Transform, ...]:
    """TRANSFORMS with ``name``'s result shifted by ``by``."""

    def apply(original):
        def corrupt(model: nn.Module, probe: Tensor) -> tuple[nn.Module, int]:
            changed, count = original(model, probe)
            return _Shifted(changed, by), count

        return corrupt

    return tuple(
        dataclasses.replace(t, apply=apply(t.apply)) if t.name == name else t
        for t in prepare_module.TRANSFORMS
    )


def _conv_weights(model: nn.Module) -> list[Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


# whether each transform shows in a prepared model
APPLIED = {
    "fold_batchnorm": lambda m: not any(isinstance(x, nn.BatchNorm2d) for x in m.modules()),
    "channels_last": lambda m: all(
        w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in _conv_weights(m)
    ),
    "dense_small_convolutions": lambda m: any(type(x).__name__ == "DenseConv2d" for x in m.modules()),
}


def test_every_transform_is_listed_with_a_way_to_see_it() -> None:
    assert set(APPLIED) == set(TRANSFORM_NAMES)


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_a_transform_that_changes_the_output_is_rejected_with_its_reason(
    small, name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, x = small
    monkeypatch.setattr(prepare_module, "TRANSFORMS", _corrupted(name, 1e-2))
    with caplog.at_level(logging.WARNING, logger="robustarch.runtime.prepare"):
        prepared, info = prepare_for_attack(model, x)
    (rejected,) = info.rejected
    assert rejected.transform == name and not rejected.kept and rejected.count > 0
    assert rejected.max_abs_logit_diff == pytest.approx(1e-2, rel=1e-2)
    assert f"differ by {rejected.max_abs_logit_diff:.3g} > tolerance {info.tolerance:.3g}" in rejected.reason
    assert any(name in r.getMessage() and "differ by" in r.getMessage() for r in caplog.records)
    assert f"not {name}: logits differ" in str(info)
    assert all(c.kept for c in info.checks if c.transform != name)
    # the model returned is rebuilt without the rejected transform and with the others
    assert {t: APPLIED[t](prepared) for t in TRANSFORM_NAMES} == {t: t != name for t in TRANSFORM_NAMES}
    assert float((logits(prepared, x) - logits(model, x)).abs().max()) <= info.tolerance


@pytest.mark.parametrize("rtol", [0.0, 1e-4, 1e-2])
def test_the_tolerance_is_rtol_times_the_logits_scale_plus_atol(
    small, rtol: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transform is kept iff max |diff| <= rtol * max |logits| + atol: just under the bound it is kept,
    just over it is not."""
    model, x = small
    atol = 1e-5
    bound = rtol * float(logits(model, x[:4]).abs().max()) + atol
    for by, kept in ((0.5 * bound, True), (2 * bound, False)):
        monkeypatch.setattr(prepare_module, "TRANSFORMS", _corrupted("channels_last", by))
        _, info = prepare_for_attack(model, x, rtol=rtol, atol=atol, fold_batchnorm=False)
        check = next(c for c in info.checks if c.transform == "channels_last")
        assert check.kept is kept, (by, bound, info)
        assert info.tolerance == pytest.approx(bound)


def test_the_probe_bounds_the_cost(small) -> None:
    """However large the batch, the model only ever sees the probe's examples, in a handful of passes."""
    model, _ = small
    seen: list[int] = []
    model.features[0][0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    _, info = prepare_for_attack(model, torch.rand(256, 3, 8, 8, generator=gen(3)))
    assert info.probe_examples == 4 and set(seen) == {4}
    # the original's logits, one check per transform, the shape-recording pass of the dense step
    assert len(seen) == 1 + len(TRANSFORM_NAMES) + 1
    _, info = prepare_for_attack(model, torch.rand(2, 3, 8, 8, generator=gen(3)), probe_examples=10)
    assert info.probe_examples == 2


def test_the_record_says_what_was_not_tried_and_why(small) -> None:
    model, x = small
    _, info = prepare_for_attack(model, x, dense_small_convolutions=False, fold_batchnorm=False)
    reasons = {c.transform: c.reason for c in info.rejected}
    assert reasons == {"fold_batchnorm": "not requested", "dense_small_convolutions": "not requested"}
    assert all(c.max_abs_logit_diff is None for c in info.rejected)
    record = json.loads(json.dumps(info.as_dict()))  # JSON-ready, for stores and benchmark files
    assert record["checks"][1] == {
        "transform": "channels_last",
        "kept": True,
        "count": 1,
        "max_abs_logit_diff": info.max_abs_logit_diff,
        "reason": "",
    }
    # nothing to fold, nothing dense: not applicable, with the reason
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    _, info = prepare_for_attack(plain, x)
    assert [c.transform for c in info.rejected] == ["fold_batchnorm", "dense_small_convolutions"]
    assert "BatchNorm2d" in info.rejected[0].reason and "feature map" in info.rejected[1].reason


def test_a_reused_convolution_keeps_its_other_calls() -> None:
    """A Conv2d module called twice, once before a BatchNorm: folding the BatchNorm into it would change the
    other call too, so it is left unfolded and the fold is not rejected as a whole."""

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.other, self.other_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

        def forward(self, x: Tensor) -> Tensor:
            y = self.other_bn(self.other(self.bn(self.conv(x)))) + self.conv(x)
            return y.mean((2, 3))

    torch.manual_seed(0)
    model = Reused().eval()
    randomize_batchnorm(model)
    x = torch.rand(4, 3, 8, 8, generator=gen(4))
    prepared, info = prepare_for_attack(model, x)
    fold = info.checks[0]
    assert fold.kept and fold.count == 1, info  # other_bn only
    assert float((logits(prepared, x) - logits(model, x)).abs().max()) <= info.tolerance


def test_a_nondeterministic_model_is_refused() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x).mean((2, 3)) + torch.rand(x.shape[0], 4)

    with pytest.raises(RobustarchError, match="nondeterministic"):
        prepare_for_attack(Noisy().eval(), torch.rand(4, 3, 8, 8, generator=gen(5)))


def test_non_finite_logits_leave_the_model_untransformed(small) -> None:
    model, x = small
    model.head.bias.data[0] = float("nan")
    prepared, info = prepare_for_attack(model, x)
    assert not any(c.kept for c in info.checks)
    assert all("not finite" in c.reason for c in info.checks)
    assert any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())


def test_the_check_runs_without_tf32_and_restores_the_settings(small, monkeypatch) -> None:
    model, x = small
    during: list[tuple[bool, bool]] = []

    def record(m: nn.Module, probe: Tensor) -> tuple[nn.Module, int]:
        during.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return m, 1

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        monkeypatch.setattr(prepare_module, "TRANSFORMS", (prepare_module.Transform("probe", record, ""),))
        prepare_for_attack(model, x)
        assert during == [(False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize(
    ("example", "kwargs", "match"),
    [
        (torch.empty(0, 3, 8, 8), {}, "non-empty batch"),
        ("images", {}, "non-empty batch"),
        (torch.rand(2, 3, 8, 8), {"rtol": -1.0}, "rtol >= 0"),
        (torch.rand(2, 3, 8, 8), {"probe_examples": 0}, "probe_examples >= 1"),
    ],
)
def test_bad_arguments_are_refused_clearly(small, example, kwargs, match: str) -> None:
    model, _ = small
    with pytest.raises(RobustarchError, match=match):
        prepare_for_attack(model, example, **kwargs)
    with pytest.raises(RobustarchError, match=r"nn\.Module"):
        prepare_for_attack(lambda x: x, torch.rand(2, 3, 8, 8))  # type: ignore[arg-type]


# (Conv2d arguments, input C, H, W): zero padding, where the dense matrix is written from the weights
DIRECT_CASES = {
    "3x3 pad 1 on 2x2": (dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), (16, 2, 2)),
    "stride 2 on 3x3": (dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1), (8, 3, 3)),
    "dilation 2, 2x3": (dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2), (8, 2, 3)),
    "groups 4, 5x5": (dict(in_channels=8, out_channels=12, kernel_size=5, padding=2, groups=4), (8, 2, 2)),
    "depthwise": (dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6), (6, 2, 2)),
    "1x3, no padding": (dict(in_channels=4, out_channels=5, kernel_size=(1, 3)), (4, 1, 4)),
    "padding valid": (dict(in_channels=4, out_channels=5, kernel_size=2, padding="valid"), (4, 3, 3)),
    "padding same": (dict(in_channels=4, out_channels=5, kernel_size=3, padding="same"), (4, 2, 2)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DIRECT_CASES))
def test_the_dense_matrix_written_from_the_weights_is_the_convolutions(case: str) -> None:
    """Bit for bit the matrix read off the convolution's responses to one-hot inputs (each entry is one
    weight either way), without running the convolution once per input feature."""
    from robustarch.runtime.dense import DenseConv2d, dense_matrix_from_responses, dense_matrix_from_weights

    kwargs, chw = DIRECT_CASES[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).eval().requires_grad_(False)
    expected = dense_matrix_from_responses(conv, chw)
    if not isinstance(conv.padding, str):  # "same" / "valid" are left to the responses
        assert torch.equal(dense_matrix_from_weights(conv, chw), expected)
    dense = DenseConv2d(conv, chw)
    assert torch.equal(dense.matrix, expected)
    x = torch.randn(3, *chw, generator=gen(6))
    torch.testing.assert_close(dense(x), conv(x), rtol=1e-5, atol=1e-5)
