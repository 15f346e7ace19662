"""Process- and model-level speed settings for running attacks, without changing numerics.

- :func:`tune_allocator` (:mod:`~robustarch.runtime.allocator`): glibc keeps freed activations for reuse.
- :func:`prepare_for_attack` (:mod:`~robustarch.runtime.prepare`): a faster evaluation copy of a model
  (BatchNorm folded, channels_last, tiny convolutions dense, :mod:`~robustarch.runtime.dense`), each
  transform kept only if the logits stay within a tolerance relative to their scale.
- :func:`request_fast_exit` / :func:`exit_process` (:mod:`~robustarch.runtime.process`): how the
  command-line entry point ends a process that cannot be finalized safely.
"""

from robustarch.runtime.allocator import tune_allocator
from robustarch.runtime.dense import DenseConv2d, dense_convolution_pays, densify_small_convolutions
from robustarch.runtime.prepare import (
    ATOL,
    PROBE_EXAMPLES,
    RTOL,
    TRANSFORMS,
    Preparation,
    Transform,
    TransformCheck,
    prepare_for_attack,
)
from robustarch.runtime.process import exit_process, request_fast_exit

__all__ = [
    "ATOL",
    "PROBE_EXAMPLES",
    "RTOL",
    "TRANSFORMS",
    "DenseConv2d",
    "Preparation",
    "Transform",
    "TransformCheck",
    "dense_convolution_pays",
    "densify_small_convolutions",
    "exit_process",
    "prepare_for_attack",
    "request_fast_exit",
    "tune_allocator",
]
