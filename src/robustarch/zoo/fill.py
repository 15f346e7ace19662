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
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

PUBLIC_SALT = 0
PUBLIC_INPUT_OFFSET = 12345
_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash constant, as in the README
_TWO_POW_M32 = 2.0**-32  # dividing by 2^32 is exact in float64
_CHUNK = 1 << 22  # elements per numpy block: bounds temporary memory for 100M-element tensors


def _check_u32(name: str, value: int) -> np.uint32:
    if not 0 <= int(value) < 2**32:
        raise ValueError(f"{name} must be an unsigned 32-bit integer, got {value}")
    return np.uint32(int(value))


def _uniform(start: np.uint32, lo: int, hi: int) -> np.ndarray:
    """``((i + start) * 2654435761 mod 2^32) / 2^32`` for ``i`` in ``[lo, hi)``, as float64."""
    i = np.arange(lo, hi, dtype=np.uint32)  # flat indices < 2^32 (no tensor here is that large)
    with np.errstate(over="ignore"):
        i += start
        i *= _GOLDEN
    return i.astype(np.float64) * _TWO_POW_M32


def _transform(key: str, ndim: int, fan_in: float, u: np.ndarray) -> np.ndarray:
    """Map ``u`` in [0, 1) to values by the README's first matching case (order matters)."""
    if key.endswith("running_var"):
        return 0.5 + u
    if key.endswith("running_mean"):
        return 0.2 * (u - 0.5)
    if ndim >= 2:
        return (u - 0.5) * 2.0 * math.sqrt(6.0 / fan_in)
    if key.endswith("weight"):
        return 1.0 + 0.2 * (u - 0.5)
    return 0.2 * (u - 0.5)


def fill_values(key: str, shape: Sequence[int], salt: int = PUBLIC_SALT) -> np.ndarray:
    """The float64 values the fill rule gives the entry ``key`` of ``shape`` (row-major)."""
    out = np.empty(tuple(shape), dtype=np.float64)
    _fill_array(key, out, _check_u32("salt", salt))
    return out


def _fill_array(key: str, out: np.ndarray, salt: np.uint32) -> None:
    flat = out.reshape(-1)  # a view: out is C-contiguous
    n = flat.size
    h = np.uint32(zlib.crc32(key.encode("utf-8"))) ^ salt
    fan_in = n / out.shape[0] if out.ndim >= 2 else float("nan")
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        flat[lo:hi] = _transform(key, out.ndim, fan_in, _uniform(h, lo, hi))


def fill_state_dict_(model: nn.Module, salt: int = PUBLIC_SALT) -> nn.Module:
    """Set every ``state_dict`` entry of ``model`` by the fill rule, in place, and return ``model``.

    ``model`` must already be float64 (``model.double()``), as the rule requires, so the values are not
    rounded to float32. Integer entries (``num_batches_tracked``) become 0. The filled dictionary is loaded
    back with strict key matching, exactly as the README prescribes.
    """
    salt32 = _check_u32("salt", salt)
    filled: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            if tensor.is_complex():
                raise TypeError(f"{key}: complex tensors are not covered by the fill rule")
            filled[key] = torch.zeros_like(tensor)
            continue
        if tensor.dtype != torch.float64:
            raise TypeError(f"{key} is {tensor.dtype}; convert the model with .double() before filling")
        arr = np.empty(tuple(tensor.shape), dtype=np.float64)
        _fill_array(key, arr, salt32)
        filled[key] = torch.from_numpy(arr)
    model.load_state_dict(filled, strict=True)
    return model


def fill_input(shape: Sequence[int], offset: int = PUBLIC_INPUT_OFFSET) -> torch.Tensor:
    """The README's deterministic float64 input: element ``i`` is ``((i * 2654435761) + offset) mod 2^32``
    divided by 2^32."""
    n = math.prod(shape)
    i = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        i *= _GOLDEN
        i += _check_u32("offset", offset)
    return torch.from_numpy((i.astype(np.float64) * _TWO_POW_M32).reshape(tuple(shape)))


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
