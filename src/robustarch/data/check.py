"""``robustarch data check``: is a dataset on disk what robustarch expects (layout, checksums, counts)?"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustarch.data._spec import DatasetSpec, dataset_info
from robustarch.data.errors import DataLayoutError


@dataclass
class SplitReport:
    split: str
    n: int
    class_counts: list[int]
    files: str
    checksums: str
    decoded: int | None = None
    seconds: float = 0.0


@dataclass
class CheckReport:
    spec: DatasetSpec
    splits: list[SplitReport] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # split -> why its files are absent


def _checksums(dataset: str, options: dict[str, Any]) -> str:
    if dataset not in ("cifar10", "cifar100"):
        return "no official sums for this format (headers, shapes and counts checked)"
    if not options.get("verify", True):
        return "not checked (verify=False)"
    return "md5 ok (user table)" if options.get("md5") else "md5 ok (official sums)"


def check(
    dataset: str,
    root: str | Path | None = None,
    splits: list[str] | None = None,
    *,
    decode: bool = False,
    threads: int | None = None,
    **options: Any,
) -> CheckReport:
    """Load each split, checking layout, checksums and class counts; with ``decode`` also decode every image.

    Problems of an asked-for split are raised. Without ``splits`` every split of the dataset is tried; one
    whose files are absent is listed in ``missing`` (a copy with only the test split is fine) unless all
    are absent.
    Any other problem (corrupt file, wrong counts, bad checksum) is raised as it is.
    """
    from robustarch.data import load_split

    info = dataset_info(dataset)
    asked = splits is not None
    todo = list(splits) if splits else list(info.per_class) or ["test"]
    reports, missing, spec = [], {}, None
    first_layout_error: DataLayoutError | None = None
    for split in todo:
        t0 = time.perf_counter()
        try:
            ds, split_spec, fingerprint = load_split(dataset, root, split, **options)
        except DataLayoutError as err:
            if asked:
                raise
            first_layout_error = first_layout_error or err
            missing[split] = str(err)
            continue
        spec = spec or split_spec
        decoded = None
        if decode and not ds.is_decoded:
            ds.uint8(threads=threads)  # raises CorruptFileError naming the first file that fails
            decoded = len(ds)
        reports.append(
            SplitReport(
                split_spec.split,
                len(ds),
                ds.class_counts(split_spec.num_classes),
                fingerprint.split("|")[0],
                _checksums(dataset, options),
                decoded,
                round(time.perf_counter() - t0, 2),
            )
        )
    if spec is None:
        assert first_layout_error is not None
        raise first_layout_error
    return CheckReport(spec, reports, missing)
