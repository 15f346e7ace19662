"""Process- and model-level speed settings for running attacks, without changing numerics.

- :func:`tune_allocator` (:mod:`~robustarch.runtime.allocator`): glibc keeps freed activations for reuse.
- :func:`prepare_for_attack` (:mod:`~robustarch.runtime.prepare`): a faster evaluation copy of a model
  (BatchNorm folded, channels_last, tiny convolutions dense, :mod:`~robustarch.runtime.dense`), each
  transform kept only if the logits stay within a tolerance relative to their scale.
- :func:`request_fast_exit` / :func:`exit_process` (:mod:`~robustarch.runtime.process`): how the
  command-line entry point ends a process that cannot be finalized safely.

The names are imported lazily: ``tune_allocator`` and the exit helpers need no torch, and every
``robustarch`` command calls ``tune_allocator``.
"""

from __future__ import annotations

from robustarch.lazy import lazy_exports

# public name -> the submodule that defines it, imported when the name is first read
_EXPORTS = {
    "tune_allocator": "allocator",
    "DenseConv2d": "dense",
    "dense_convolution_pays": "dense",
    "densify_small_convolutions": "dense",
    "ATOL": "prepare",
    "PROBE_EXAMPLES": "prepare",
    "RTOL": "prepare",
    "TRANSFORMS": "prepare",
    "Preparation": "prepare",
    "Transform": "prepare",
    "TransformCheck": "prepare",
    "prepare_for_attack": "prepare",
    "exit_process": "process",
    "request_fast_exit": "process",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
