"""Datasets in their standard on-disk formats, with the study's preprocessing, and a tensor cache.

``load(dataset, root, split="test", limit=None, subset=None)`` returns ``(dataset, spec)``: a torch Dataset of
``(image, label)`` (float C x H x W in [0, 1], int) with ``example_ids`` and ``uint8()``, and a
:class:`DatasetSpec`. See docs/data.md for the accepted layouts. The dataset table (:data:`DATASETS`) is
plain data: reading it imports no torch (the names are imported when first read).
"""

from __future__ import annotations

from robustarch.lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys(
        ("BUDGET_LINF", "DATASETS", "DATASET_INFO", "DatasetInfo", "DatasetSpec", "budget_dataset",
         "dataset_info", "family_of_size", "list_datasets"),
        "_spec",
    ),
    **dict.fromkeys(
        ("CacheError", "ChecksumError", "ClassCountError", "CorruptFileError", "DataError",
         "DataLayoutError"),
        "errors",
    ),
    **dict.fromkeys(
        ("DataSource", "as_source", "load_source", "source_from_dataset", "source_from_tensors"), "source"
    ),
    **dict.fromkeys(("SubsetArg", "is_class_sorted", "select", "spread_positions"), "subsets"),
    "ImageDataset": "_dataset",
    "Preprocess": "_images",
    "load": "loading",
    "load_split": "loading",
    "cached": "cache",  # and the cache module itself: robustarch.data.cache
}  # fmt: skip
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
