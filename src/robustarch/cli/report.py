"""``robustarch report``: the paper's tables and figures from a results store."""

from __future__ import annotations

import argparse

from robustarch.errors import RobustarchError

# robustarch.report.build.FORMATS, written out so that building the parser imports no figure code (a test
# checks that the two agree)
FORMATS = ("md", "tex", "csv", "html")


def _formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"formats must be a comma list of {', '.join(FORMATS)}; got {text!r}"
        )
    return formats


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render tables (Markdown, LaTeX, CSV) and figures (PNG, SVG) and one HTML page from a store",
        description="Render the paper's Tables 1-4 and Figures 1-3 from a results store, "
        "with 95% intervals, the paper's published values beside measured ones, reliability flags "
        "and provenance.",
    )
    parser.add_argument("--store", help="results store (SQLite file written by evaluate / study run)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument(
        "--format",
        type=_formats,
        default=list(FORMATS),
        metavar="LIST",
        help=f"comma list of {','.join(FORMATS)} (default: all); figures are always written",
    )
    parser.add_argument(
        "--paper-only",
        action="store_true",
        help="render the paper's own published numbers (Tables 1-4, Figures 1-3); no store needed",
    )
    parser.add_argument("--include-incomplete", action="store_true", help="also report runs not yet finished")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.paper_only and not args.store:
        raise RobustarchError("give --store STORE (or --paper-only for the paper's own numbers)")
    from robustarch.report.build import build_report

    written = build_report(
        None if args.paper_only else args.store,
        args.out,
        args.format,
        paper_only=args.paper_only,
        include_incomplete=args.include_incomplete,
    )
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
