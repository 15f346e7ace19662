"""``robustarch weights list | fetch | verify | path | convert``: the published-weights registry."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = """\
Cache: $ROBUSTARCH_HOME/weights; ROBUSTARCH_HOME defaults to $XDG_CACHE_HOME/robustarch, ~/.cache/robustarch.
ROBUSTARCH_OFFLINE=1 never touches the network; ROBUSTARCH_WEIGHTS_MIRROR (a URL or a folder with the
cache's layout, or a flat folder of the registry's file names) is searched first. Files without a published
sha256 are recorded on first download (trust on first use) and checked ever after. Google Drive folders need
gdown: pip install 'robustarch[drive]'. See docs/weights.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="published weights: list, fetch, verify, path, convert",
        description="Published weights for the zoo by name: a checksummed, cached, mirrorable registry.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="weights_command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", help="the registry's entries", description="List the registry's entries.")
    _selection(p, model_positional=False)
    p.add_argument("--json", action="store_true", help="a JSON list of objects (model, dataset, source, ...)")
    p.set_defaults(func=run_list)

    p = commands.add_parser(
        "fetch",
        help="download and verify weights",
        description="Download (or import with --file) and verify one entry, or every entry a study names.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="model id, e.g. resnet18 or densenas_r3")
    p.add_argument("--dataset", metavar="D", help="cifar10, cifar100 or imagenet")
    p.add_argument("--source", metavar="S", help="source name or alias (default: the entry's default)")
    p.add_argument(
        "--file", metavar="PATH", help="import this local file (or model folder) instead of downloading"
    )
    p.add_argument(
        "--study", metavar="STUDY", help="every source a study file names (a file or a bundled name)"
    )
    p.add_argument("--no-download", action="store_true", help="use only the cache and a local mirror folder")
    p.set_defaults(func=run_fetch)

    p = commands.add_parser("verify", help="re-hash cached files", description="Re-hash every cached file.")
    _selection(p, model_positional=True)
    p.set_defaults(func=run_verify)

    p = commands.add_parser(
        "path", help="where an entry's file is", description="Print the verified local path of an entry."
    )
    p.add_argument("model")
    p.add_argument("--dataset", metavar="D", required=True)
    p.add_argument("--source", metavar="S")
    p.set_defaults(func=run_path)

    p = commands.add_parser(
        "convert",
        help="write a .safetensors copy",
        description="Write a checkpoint's weights as .safetensors (no pickle needed to read it). With "
        "--model and --dataset the weights are first loaded strictly into the zoo model, so the output has "
        "the zoo's own key names (prefixes and old key layouts removed).",
    )
    p.add_argument("input", help="a checkpoint file or model folder")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--model", metavar="M")
    p.add_argument("--dataset", metavar="D")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="architecture override for --model, e.g. --override width=8 (repeatable; kept in the output)",
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)"
    )
    p.set_defaults(func=run_convert)


def _selection(p: argparse.ArgumentParser, *, model_positional: bool) -> None:
    if model_positional:
        p.add_argument("model", nargs="?", help="only this model id")
    else:
        p.add_argument("--model", metavar="M", help="only this model id")
    p.add_argument("--dataset", metavar="D", help="only this dataset (cifar10, cifar100, imagenet, ...)")
    p.add_argument("--source", metavar="S", help="only this source")


def _selected(args: argparse.Namespace) -> list[Any]:
    from robustarch.errors import UnknownNameError
    from robustarch.zoo import weights

    if args.source is not None and args.source not in weights.sources():
        raise UnknownNameError("weights source", args.source, weights.sources())
    found = weights.entries(args.dataset, source=args.source, model=args.model)
    found.sort(key=lambda e: (e.dataset, e.model, not e.default, e.source))
    if args.model is not None and not found:
        weights.lookup(args.model, args.dataset or "imagenet")  # raises with close names
    return found


def _hash_label(entry: Any) -> str:
    if not entry.available:
        return "-"
    if entry.sha256:
        return "pinned"
    return f"prefix {entry.sha256_prefix}" if entry.sha256_prefix else "first use"


def run_list(args: argparse.Namespace) -> int:
    from robustarch.zoo import weights

    selected = _selected(args)
    if args.json:
        out = []
        for e in selected:
            record = e.as_json()
            record["cached"] = weights.cached_path(e).exists() if e.available else False
            out.append(record)
        print(json.dumps(out, indent=1))
        return 0
    header = ("model", "dataset", "source", "cached", "sha256", "top-1", "file")
    rows = []
    for e in selected:
        source = e.source + ("*" if e.default else "")
        cached = ("yes" if weights.cached_path(e).exists() else "no") if e.available else "-"
        top1 = f"{e.top1:g}" if e.top1 is not None else "-"
        rows.append(
            (e.model, e.dataset, source, cached, _hash_label(e), top1, e.file if e.available else "(none)")
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\n{len(rows)} entries; * = the default source (weights=True). Details: docs/weights.md")
    return 0


TRUST_WORDS = {
    "pinned": "sha256 matches the registry's pin",
    "prefix": "sha256 prefix checked, full hash recorded in the lock file",
    "recorded": "sha256 matches the hash recorded on first use",
    "first-use": "trust on first use: no published sha256, so its hash is recorded now and checked later",
}


def _report(result: Any) -> str:
    return f"{result.entry.describe()}: {result.how}; {TRUST_WORDS[result.trust]}\n  {result.path}"


def run_fetch(args: argparse.Namespace) -> int:
    from robustarch.errors import RobustarchError
    from robustarch.zoo import weights

    if args.study:
        if args.model or args.file:
            raise RobustarchError("fetch --study takes no MODEL or --file")
        return _fetch_study(args.study, download=not args.no_download, dataset=args.dataset)
    if not args.model or not args.dataset:
        raise RobustarchError("fetch needs MODEL --dataset D (or --study STUDY)")
    entry = weights.lookup(args.model, args.dataset, args.source)
    result = weights.fetch(entry, download=not args.no_download, local_file=args.file)
    print(_report(result))
    return 0


def _fetch_study(study: str, *, download: bool, dataset: str | None) -> int:
    from robustarch.errors import RobustarchError
    from robustarch.zoo import weights

    failed = done = skipped = 0
    for req in weights.study_weights(study):
        if dataset and req.dataset != dataset:
            continue
        where = f"{req.dataset} / {req.model_id}"
        if req.entry is None:
            skipped += 1
            print(f"{where}: skipped, weights = {req.weights!r} is not a registry source")
            continue
        try:
            print(_report(weights.fetch(req.entry, download=download)))
            done += 1
        except RobustarchError as err:
            failed += 1
            print(f"{where}: FAILED ({req.entry.source}): {err}", file=sys.stderr)
    print(f"\n{done} ready, {failed} failed, {skipped} skipped (local files or no weights)")
    return 1 if failed else 0


def run_verify(args: argparse.Namespace) -> int:
    from robustarch.zoo import weights

    checks = weights.verify_cache(_selected(args))
    counts = {"ok": 0, "mismatch": 0, "unreadable": 0, "missing": 0}
    for c in checks:
        counts[c.status] += 1
        if c.status == "ok":
            print(f"ok        {c.entry.describe()} ({c.message})")
        elif c.status != "missing" or args.model:
            print(f"{c.status:9} {c.entry.describe()}: {c.message}")
    print(
        f"\n{counts['ok']} ok, {counts['mismatch']} mismatched, {counts['unreadable']} unreadable, "
        f"{counts['missing']} not downloaded"
    )
    return 1 if counts["mismatch"] or counts["unreadable"] else 0


def run_path(args: argparse.Namespace) -> int:
    from robustarch.zoo import weights

    entry = weights.lookup(args.model, args.dataset, args.source)
    try:
        print(weights.fetch(entry, download=False).path)
    except weights.OfflineError as err:
        print(weights.cached_path(entry))
        print(f"robustarch weights path: not downloaded yet. {err}", file=sys.stderr)
        return 1
    return 0


def _overrides(items: list[str]) -> dict[str, Any]:
    import tomllib

    from robustarch.errors import RobustarchError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RobustarchError(f"--override expects NAME=VALUE, got {item!r}")
        try:  # TOML literals (8, true, "x", [1, 2]); anything else is a string
            out[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text.strip()
    return out


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustarch.errors import RobustarchError
    from robustarch.zoo import file_sha256, load, read_checkpoint, save_safetensors, unwrap

    src, out = Path(args.input).expanduser(), Path(args.output).expanduser()
    if out.suffix != ".safetensors":
        raise RobustarchError(f"the output must end in .safetensors, got {out.name}")
    if (args.model is None) != (args.dataset is None) or (args.override and not args.model):
        raise RobustarchError("--model and --dataset go together, and --override needs them")
    state, metadata = read_checkpoint(src, allow_pickle=args.allow_pickle)
    if args.model:
        overrides = _overrides(args.override)
        model = load(args.model, args.dataset, weights=src, allow_pickle=args.allow_pickle, **overrides)
        state = unwrap(model).state_dict()
        metadata = {**metadata, "model": args.model, "dataset": args.dataset}
        if overrides:
            metadata["overrides"] = overrides
    metadata["converted_from"] = src.name
    save_safetensors(state, out, metadata)
    print(f"wrote {out}: {len(state)} tensors, sha256 {file_sha256(out)}")
    return 0
