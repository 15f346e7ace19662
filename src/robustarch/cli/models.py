"""``robustarch models [--dataset D]``: list the zoo."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model zoo",
        description="List the registered models: name, dataset family, family, parameters, reference.",
    )
    parser.add_argument(
        "--dataset",
        metavar="D",
        help="only models that build for this dataset (cifar10, cifar100, cifar10-jpeg, fashion-mnist, "
        "imagenet)",
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="hide alternatives the study did not use (e.g. vgg16_bn_head2021)",
    )
    parser.set_defaults(func=run)


def _millions(count: int | None) -> str:
    return "(args)" if count is None else f"{count / 1e6:.2f}"  # None: the entry needs arguments to build


def run(args: argparse.Namespace) -> int:
    from robustarch import zoo

    if args.dataset is not None:
        zoo.dataset_shape(args.dataset)  # unknown names raise UnknownNameError with close names

    representative = {"cifar": "cifar10", "imagenet": "imagenet"}
    rows = []
    for spec in zoo.list_specs(args.dataset, variants=not args.no_variants):
        dataset = args.dataset or representative[spec.dataset_family]
        # stored counts (zoo/configs/parameter_counts.json): building every network took seconds
        count = zoo.parameter_count(spec.name, dataset)
        rows.append((spec.name, dataset, spec.family, _millions(count), spec.reference))
    header = ("name", "dataset", "family", "params (M)", "reference")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [
            c.ljust(w) if i != 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, row[-1]]))
    return 0
