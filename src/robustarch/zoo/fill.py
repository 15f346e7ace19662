"""The conformance fill rule and input rule of ``shared/conformance/README.md``.

Every entry of a ``state_dict`` gets a value that depends only on its key string, its shape and a 32-bit
``salt``; the input depends only on its shape and a 32-bit ``offset``. Running a re-implementation and the
authors' code under these rules and comparing logits proves the two compute the same function without any
checkpoint. Both rules are computed with numpy ``uint32`` arithmetic: multiplication of unsigned 32-bit
integers wraps modulo 2^32, which is exactly the ``mod 2^32`` the rule asks for, so no 64-bit intermediate
and no Python loop is needed (ImageNet VGG16-BN has 138M parameters).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

PUBLIC_SALT = 0
PUBLIC_INPUT_OFFSET = 12345
_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash constant, as in the README
_CHUNK = 1 << 16  # elements per block: the float64 block (512 KiB) stays in cache through the in-place ops
# i * 2654435761 mod 2^32 for i < _CHUNK; block k then only adds a constant (uint32 addition wraps mod 2^32)
with np.errstate(over="ignore"):
    _STEPS = np.arange(_CHUNK, dtype=np.uint32) * _GOLDEN


def _check_u32(name: str, value: int) -> np.uint32:
    if not 0 <= int(value) < 2**32:
        raise ValueError(f"{name} must be an unsigned 32-bit integer, got {value}")
    return np.uint32(int(value))


def _fill_array(key: str, out: np.ndarray, salt: np.uint32) -> None:
    """Write the rule's values for ``key`` into the C-contiguous float64 array ``out``.

    With ``x = ((i + h) * 2654435761) mod 2^32`` and ``u = x / 2^32``, the README's cases are evaluated in
    an order whose intermediate steps are exact in float64 (``u - 0.5`` and ``2 * (u - 0.5) = x / 2^31 - 1``
    have at most 33 significant bits), so the single final rounding equals that of the literal formula.
    """
    flat = out.reshape(-1)  # a view: out is C-contiguous
    n = flat.size
    h = np.uint32(zlib.crc32(key.encode("utf-8"))) ^ salt
    if key.endswith("running_var"):
        case = "var"
    elif key.endswith("running_mean"):
        case = "mean"
    elif out.ndim >= 2:
        case = "he"
        bound = math.sqrt(6.0 / (n / out.shape[0]))
    else:
        case = "scale" if key.endswith("weight") else "shift"
    with np.errstate(over="ignore"):
        for lo in range(0, n, _CHUNK):
            dst = flat[lo : lo + _CHUNK]
            x = _STEPS[: dst.size] + np.uint32((int(h) + lo) * 2654435761 % 2**32)
            if case == "var":  # 0.5 + u
                np.multiply(x, 2.0**-32, out=dst)
                dst += 0.5
            elif case == "he":  # (u - 0.5) * 2 * sqrt(6 / fan_in)
                np.multiply(x, 2.0**-31, out=dst)
                dst -= 1.0
                dst *= bound
            else:
                np.multiply(x, 2.0**-32, out=dst)
                dst -= 0.5
                dst *= 0.2
                if case == "scale":  # 1 + 0.2 * (u - 0.5); "mean" and "shift" are 0.2 * (u - 0.5)
                    dst += 1.0


def fill_values(key: str, shape: Sequence[int], salt: int = PUBLIC_SALT) -> np.ndarray:
    """The float64 values the fill rule gives the entry ``key`` of ``shape`` (row-major)."""
    out = np.empty(tuple(shape), dtype=np.float64)
    _fill_array(key, out, _check_u32("salt", salt))
    return out


def fill_state_dict_(model: nn.Module, salt: int = PUBLIC_SALT) -> nn.Module:
    """Set every ``state_dict`` entry of ``model`` by the fill rule, in place, and return ``model``.

    ``model`` must already be float64 (``model.double()``), as the rule requires, so the values are not
    rounded to float32. Integer entries (``num_batches_tracked``) become 0. Values are written straight into
    the tensors' storage, which is what the README's "load the filled dictionary back with strict key
    matching" amounts to (every key of the model's own ``state_dict`` gets its value, no other key exists),
    without a second 1 GiB copy for VGG16.
    """
    salt32 = _check_u32("salt", salt)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_complex():
                raise TypeError(f"{key}: complex tensors are not covered by the fill rule")
            if not tensor.is_floating_point():
                tensor.zero_()
                continue
            if tensor.dtype != torch.float64:
                raise TypeError(f"{key} is {tensor.dtype}; convert the model with .double() before filling")
            if tensor.device.type == "cpu" and tensor.is_contiguous():
                _fill_array(key, tensor.numpy(), salt32)
            else:
                values = np.empty(tuple(tensor.shape), dtype=np.float64)
                _fill_array(key, values, salt32)
                tensor.copy_(torch.from_numpy(values))
    return model


def empty_float64(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` as a float64 CPU network with uninitialised storage, ready for :func:`fill_state_dict_`.

    Built on the meta device, so the reference initialisation (and a float32 copy) of VGG16's 138M
    parameters is skipped; the fill rule overwrites every ``state_dict`` entry anyway. A network holding
    buffers outside its ``state_dict`` (whose values the rule does not set) is built normally instead.
    """
    with torch.device("meta"):
        net = factory()
    outside = {n for n, _ in net.named_buffers()} - set(net.state_dict())
    if outside:
        return factory().double()
    return net.double().to_empty(device="cpu")


def fill_input(shape: Sequence[int], offset: int = PUBLIC_INPUT_OFFSET) -> torch.Tensor:
    """The README's deterministic float64 input: element ``i`` is ``((i * 2654435761) + offset) mod 2^32``
    divided by 2^32."""
    n = math.prod(shape)
    i = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        i *= _GOLDEN
        i += _check_u32("offset", offset)
    return torch.from_numpy((i.astype(np.float64) * 2.0**-32).reshape(tuple(shape)))


@torch.no_grad()
def conformance_logits(
    model: nn.Module, input_shape: Sequence[int], salt: int = PUBLIC_SALT, offset: int = PUBLIC_INPUT_OFFSET
) -> torch.Tensor:
    """Logits of a freshly built bare network under the fill and input rules (float64, eval mode).

    Sets the training-only attributes the reference code reads in ``forward`` (``drop_path_prob``,
    ``droprate``) to 0 where present, and keeps the first element if the network returns a tuple.
    """
    model = model.double()
    fill_state_dict_(model, salt)
    for attr in ("drop_path_prob", "droprate"):
        if hasattr(model, attr):
            setattr(model, attr, 0.0)
    model.eval()
    out = model(fill_input(input_shape, offset))
    return out[0] if isinstance(out, tuple) else out


def check_fixture(fixture: dict) -> dict:
    """Compare the zoo's network with one conformance fixture (the README's JSON object), under the SALT and
    INPUT_OFFSET the fixture records. Returns ``layout_ok``, ``params_ok``, ``max_abs_err``, ``tolerance``
    and ``ok``."""
    from robustarch import zoo

    name, dataset = fixture["model"], fixture["dataset"]
    with torch.device("meta"):
        meta_net = zoo.build(name, dataset)
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in meta_net.state_dict().items()}
    layout_ok = ours == {k: (shape, dtype) for k, shape, dtype in fixture["state_dict"]}
    params_ok = zoo.count_parameters(meta_net) == fixture["params_total"]
    rule = fixture["rule"]
    net = empty_float64(lambda: zoo.build(name, dataset))
    got = conformance_logits(net, fixture["input_shape"], rule["salt"], rule["input_offset"])
    ref = torch.tensor(fixture["logits"], dtype=torch.float64)
    err = (got - ref).abs().max().item() if got.shape == ref.shape else math.inf
    tol = 1e-8 * max(1.0, ref.abs().max().item())
    return {
        "layout_ok": layout_ok,
        "params_ok": params_ok,
        "max_abs_err": err,
        "tolerance": tol,
        "ok": layout_ok and params_ok and err <= tol,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m robustarch.zoo.fill DIR_OR_JSON...``: check conformance fixtures (e.g. a held-out set
    written with another SALT / INPUT_OFFSET) against the zoo; exit status 1 if any fails."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m robustarch.zoo.fill", description=main.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="fixture JSON files or directories holding them")
    args = parser.parse_args(argv)
    files = sorted(
        f
        for p in args.paths
        for f in (p.rglob("*.json") if p.is_dir() else [p])
        if f.name not in ("index.json", "architectures.json")
    )
    failures = 0
    for f in files:
        result = check_fixture(json.loads(f.read_text()))
        failures += not result["ok"]
        print(
            f"{'ok  ' if result['ok'] else 'FAIL'} {f}: layout {result['layout_ok']}, params "
            f"{result['params_ok']}, max|err| {result['max_abs_err']:.3e} (tol {result['tolerance']:.3e})"
        )
    print(f"{len(files) - failures}/{len(files)} fixtures match")
    return 1 if failures or not files else 0


if __name__ == "__main__":
    raise SystemExit(main())
