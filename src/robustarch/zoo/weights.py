"""Published weights by name: a checksummed, mirrorable download registry for the zoo.

``weights.json`` (beside this file) holds one entry per (model id, dataset, source): the source's name
(``torchvision``, ``authors``, ``study``, ...), where the file is (a URL, a Google Drive file id, a file in a
Drive folder, or a member of a published archive), its file name, its sha256 where it is published (at least
the 8-digit prefix torchvision's file names carry), its format and key prefix, its licence and the accuracy
the source reports. Entries without a public file say so. ``docs/weights.md`` is generated from it.

    from robustarch.zoo import weights
    path = weights.resolve("resnet18", "imagenet")                  # the entry's default source
    path = weights.resolve("darts", "cifar10", "authors", download=False)
    model = robustarch.zoo.load("resnet18", "imagenet", weights="torchvision")   # or weights=True

Downloads are verified (content first, then the sha256; unpinned files are recorded on first use in the
cache's lock file and checked ever after) and cached under ``$ROBUSTARCH_HOME/weights`` (see
:mod:`robustarch.zoo._cache`). ``ROBUSTARCH_OFFLINE=1`` never touches the network;
``ROBUSTARCH_WEIGHTS_MIRROR`` (a URL or a local folder with the cache's layout) is searched first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo import _cache, _fetch
from robustarch.zoo._checkpoint import check_weight_file, weight_file_in
from robustarch.zoo._registry import DATASETS, Stats

log = logging.getLogger(__name__)

Kind = Literal["url", "drive", "drive-folder", "archive", "none"]
KINDS = ("url", "drive", "drive-folder", "archive", "none")
FORMATS = ("torch", "safetensors", "folder")
Trust = Literal["pinned", "prefix", "recorded", "first-use"]


class WeightsError(RobustarchError):
    """Weights that cannot be had: no public file, offline, a download that failed its checks."""


class OfflineError(WeightsError):
    """The file is not cached and the network may not be used (``ROBUSTARCH_OFFLINE=1`` or download=False)."""


class HashMismatchError(WeightsError):
    """A file's sha256 differs from the pinned or recorded one; the file was not used."""


@dataclass(frozen=True)
class WeightEntry:
    """One published weight file of one zoo model on one dataset, from one source."""

    model: str  # the id: a zoo name, or a named weight set of a generic zoo entry (densenas_r3)
    dataset: str
    source: str
    kind: Kind
    file: str | None = None  # its name in the cache and in a mirror folder
    default: bool = False  # the entry weights=True picks for (model, dataset)
    aliases: tuple[str, ...] = ()  # other names of the source, e.g. torchvision's IMAGENET1K_V1
    url: str | None = None
    drive_id: str | None = None  # a Drive file id, or the folder's id for "drive-folder"
    archive: str | None = None  # a name in the registry's "archives"
    member: str | None = None  # the file inside the archive or the Drive folder (fnmatch pattern for folders)
    files: tuple[str, ...] = ()  # what a model folder holds (format "folder")
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    format: str = "torch"  # "torch" (torch.save), "safetensors", or "folder" (an authors' model folder)
    state_dict_key: str | None = None  # where the state_dict sits in the saved dict, None for a raw one
    key_prefix: str = ""  # e.g. "module." for files saved from nn.DataParallel
    key_style: str | None = None  # "densenet-legacy": torchvision's old norm.1 key names
    overrides: dict[str, Any] = field(default_factory=dict)  # build() arguments; "{path}" = the fetched path
    mean: tuple[float, ...] | None = None  # the input normalization these weights need, if not the zoo's
    std: tuple[float, ...] | None = None
    licence: str | None = None
    top1: float | None = None  # accuracy (%) the source reports
    top5: float | None = None
    reported_by: str | None = None
    notes: str = ""
    zoo: str | None = None  # the zoo entry that builds it, when it is not ``model``

    @property
    def key(self) -> str:
        """Its identity in the lock file: the cache path, so a renamed or re-released file is a new key."""
        return f"{self.source}/{self.model}/{self.dataset}" + (f"/{self.file}" if self.file else "")

    @property
    def relpath(self) -> PurePosixPath:
        """Where it lives in the cache and in a mirror folder."""
        return PurePosixPath(self.source, self.model, self.dataset, self.file or "")

    @property
    def zoo_name(self) -> str:
        return self.zoo or self.model

    @property
    def available(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        return f"{self.model} on {self.dataset} from {self.source}"

    def link(self) -> str | None:
        """The address of the file, its Drive page or folder, or its archive."""
        if self.kind == "url":
            return self.url
        if self.kind == "drive":
            return _fetch.DRIVE_FILE_PAGE.format(id=self.drive_id)
        if self.kind == "drive-folder":
            return _fetch.DRIVE_FOLDER_PAGE.format(id=self.drive_id)
        if self.kind == "archive":
            return str(archives()[str(self.archive)]["url"])
        return None

    def page(self) -> str | None:
        """Where a person gets the file: :meth:`link`, and the file inside a folder or archive."""
        link = self.link()
        if link and self.member and self.kind in ("drive-folder", "archive"):
            return f"{link} (file {self.member})"
        return link

    def normalization(self) -> Stats | None:
        return (tuple(self.mean), tuple(self.std)) if self.mean and self.std else None

    def build_overrides(self, path: Path) -> dict[str, Any]:
        """``overrides`` with ``"{path}"`` replaced by the fetched file or folder."""
        return {k: (str(path) if v == "{path}" else v) for k, v in self.overrides.items()}

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["url"] = self.link()
        out["zoo"] = self.zoo_name
        for key in ("aliases", "files", "mean", "std"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did: the path, how it got there and how it was verified."""

    entry: WeightEntry
    path: Path
    how: Literal["cached", "downloaded", "mirror", "imported"]
    trust: Trust
    sha256: dict[str, str]


# --------------------------------------------------------------------------------------------------
# the registry


def _entry(raw: dict[str, Any]) -> WeightEntry:
    known = {f.name for f in fields(WeightEntry)}
    unknown = set(raw) - known
    if unknown:
        raise RuntimeError(f"weights.json: unknown keys {sorted(unknown)} in {raw.get('model')}")
    data = dict(raw)
    for key in ("aliases", "files", "mean", "std"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    entry = WeightEntry(**data)
    if entry.kind not in KINDS or entry.format not in FORMATS:
        raise RuntimeError(f"weights.json: {entry.key} has kind {entry.kind!r} / format {entry.format!r}")
    return entry


@functools.cache
def _registry() -> dict[str, Any]:
    text = resources.files("robustarch.zoo").joinpath("weights.json").read_text(encoding="utf-8")
    data = json.loads(text)
    data["entries"] = tuple(_entry(e) for e in data["entries"])
    return data


def entries(
    dataset: str | None = None, *, source: str | None = None, model: str | None = None
) -> list[WeightEntry]:
    """Registry entries, optionally for one dataset (aliases such as ``cifar10-jpeg`` map to the dataset whose
    images they are), one source and one model id."""
    ds = canonical_dataset(dataset) if dataset is not None else None
    return [
        e
        for e in _registry()["entries"]
        if (ds is None or e.dataset == ds)
        and (source is None or e.source == source)
        and (model is None or e.model == model)
    ]


def sources() -> dict[str, str]:
    """Source name -> what it is."""
    return dict(_registry()["sources"])


def archives() -> dict[str, dict[str, Any]]:
    return dict(_registry()["archives"])


def canonical_dataset(dataset: str) -> str:
    """The dataset whose published weights apply (``cifar10-jpeg`` holds CIFAR-10's images)."""
    if dataset not in DATASETS:
        raise UnknownNameError("dataset", dataset, DATASETS)
    return _registry()["dataset_aliases"].get(dataset, dataset)


def source_names() -> set[str]:
    """Every source name and alias in the registry."""
    return {e.source for e in entries()} | {a for e in entries() for a in e.aliases}


def looks_like_source(value: object) -> bool:
    """Whether a ``weights=`` string names a source rather than a file: a registered source or alias, or a
    bare word that is no existing path (so a misspelt source gets close names, not "file not found")."""
    if not isinstance(value, str) or is_url(value):
        return False
    if value in source_names():
        return True
    return "/" not in value and os.sep not in value and "." not in value and not Path(value).exists()


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.split("://", 1)[0] in ("http", "https")


def lookup(model: str, dataset: str, source: str | bool | None = None) -> WeightEntry:
    """The entry for ``model`` (a zoo name or a weight-set id) on ``dataset`` from ``source`` (a name or an
    alias; ``None`` / ``True`` = the default entry)."""
    ds = canonical_dataset(dataset)
    candidates = [e for e in entries() if e.model == model and e.dataset == ds]
    if not candidates:
        raise _no_entry(model, dataset, ds)
    if source is None or source is True:
        return next(e for e in candidates if e.default)
    for e in candidates:
        if source == e.source or source in e.aliases:
            return e
    names = [e.source for e in candidates] + [a for e in candidates for a in e.aliases]
    raise UnknownNameError(
        f"weights source for {model} on {dataset} (or pass a checkpoint path)", str(source), names
    )


def _no_entry(model: str, dataset: str, ds: str) -> RobustarchError:
    ids = sorted({e.model for e in entries(ds) if e.zoo_name == model})
    if ids:
        return WeightsError(
            f"{model!r} has several published weight sets on {dataset}: {', '.join(ids)}. Name one, e.g. "
            f"zoo.load({ids[0]!r}, {dataset!r}, weights=True)"
        )
    known = sorted({e.model for e in entries()})
    if model not in known:
        from robustarch.zoo._registry import all_specs

        if model not in {s.name for s in all_specs()}:
            return UnknownNameError("model", model, known)
    return WeightsError(
        f"the registry has no published weights for {model!r} on {dataset} (see `robustarch weights list "
        f"--dataset {ds}`); pass a checkpoint path, or train it with `robustarch train`"
    )


# --------------------------------------------------------------------------------------------------
# verification


def _verify(
    key: str, label: str, path: Path, origin: str, sha256: str | None, prefix: str | None
) -> tuple[Trust, dict[str, str]]:
    """Check ``path`` against the pinned hash, the pinned prefix or the lock file's record, recording it on
    first use. Raises :class:`HashMismatchError` with both hashes."""
    actual = _cache.digest(path)
    main = actual.get("") or next(iter(actual.values()), "")
    if sha256 and main != sha256:
        raise _mismatch(label, path, origin, sha256, main, "the sha256 the registry pins")
    if prefix and not main.startswith(prefix):
        raise _mismatch(
            label, path, origin, prefix + "...", main, "the sha256 prefix its published name carries"
        )
    if sha256:
        return "pinned", actual
    recorded = _cache.read_lock().get(key)
    if recorded:
        if recorded["sha256"] != actual:
            expected = ", ".join(f"{k or label}: {v}" for k, v in recorded["sha256"].items())
            got = ", ".join(f"{k or label}: {v}" for k, v in actual.items())
            how = f"recorded on first use {recorded['recorded']} from {recorded['origin']}"
            raise _mismatch(label, path, origin, expected, got, how)
        return "recorded", actual
    _cache.record(key, actual, origin)
    if prefix:
        log.info(
            "%s: sha256 prefix %s checked; full hash %s recorded in %s",
            label,
            prefix,
            main,
            _cache.lock_path(),
        )
        return "prefix", actual
    log.warning(
        "trust on first use: %s has no published sha256; recorded %s in %s, and every later use is checked "
        "against it",
        label,
        main,
        _cache.lock_path(),
    )
    return "first-use", actual


def _mismatch(label: str, path: Path, origin: str, expected: str, actual: str, how: str) -> HashMismatchError:
    return HashMismatchError(
        f"sha256 mismatch for {label} ({path}, from {origin}): expected {expected} ({how}), got {actual}. "
        "The file is damaged or is not the published one, so it was not used. Delete it and fetch it again; "
        "if the source really changed the file, check it and remove its line from the lock file "
        f"{_cache.lock_path()}."
    )


def _check_content(entry: WeightEntry, path: Path) -> None:
    """An HTML page, a truncated file or a foreign archive is refused before it can look cached."""
    if entry.format == "folder":
        missing = [f for f in entry.files if not (path / f).is_file()]
        if missing:
            raise WeightsError(
                f"{path}: the model folder lacks {', '.join(missing)} (expected {list(entry.files)})"
            )
        check_weight_file(weight_file_in(path))
    else:
        check_weight_file(path)
        if entry.size is not None and path.stat().st_size != entry.size:
            raise WeightsError(
                f"{path} has {path.stat().st_size} bytes, but {entry.file} has {entry.size} (the registry's "
                "size): an incomplete or different file. Delete it and fetch it again."
            )


def _verify_entry(entry: WeightEntry, path: Path, origin: str) -> tuple[Trust, dict[str, str]]:
    return _verify(
        entry.key, f"{entry.file} ({entry.describe()})", path, origin, entry.sha256, entry.sha256_prefix
    )


# --------------------------------------------------------------------------------------------------
# fetching


def cached_path(entry: WeightEntry) -> Path:
    return _cache.weights_dir().joinpath(*entry.relpath.parts)


def _local_mirror() -> Path | None:
    value = _cache.mirror()
    if value is None or is_url(value):
        return None
    if value.startswith("file://"):
        value = urllib.parse.unquote(urllib.parse.urlparse(value).path)
    return Path(value).expanduser()


def _mirror_url() -> str | None:
    value = _cache.mirror()
    return value.rstrip("/") if value and is_url(value) else None


def _mirror_candidates(entry: WeightEntry) -> list[str]:
    """Paths inside a mirror, in order: the cache's layout, then the bare file name (a flat folder)."""
    return [entry.relpath.as_posix(), str(entry.file)]


def _no_network(download: bool) -> str | None:
    """Why the network may not be used now, or None."""
    if _cache.offline():
        return "offline mode is on (ROBUSTARCH_OFFLINE=1)"
    if not download:
        return "downloads are off (download=False / --no-download)"
    return None


def _unavailable(entry: WeightEntry, target: Path, why: str) -> OfflineError:
    mirror = _cache.mirror()
    searched = f" nor in the mirror {mirror}" if mirror else ""
    return OfflineError(
        f"{why}: {entry.file} ({entry.describe()}) is not in the cache ({target}){searched}. Get it from "
        f"{entry.page()} and put it at {target} (or at <mirror>/{entry.relpath}), or import a downloaded "
        f"copy with `robustarch weights fetch {entry.model} --dataset {entry.dataset} "
        f"--source {entry.source} --file PATH`, or fetch it on a machine with internet and copy that cache "
        "folder here."
    )


def fetch(
    entry: WeightEntry, *, download: bool = True, local_file: str | os.PathLike[str] | None = None
) -> FetchResult:
    """Make ``entry``'s file available and verified; returns where it is and how it was checked.

    Order: ``local_file`` (imported into the cache), the cache, a local mirror folder, then (unless offline
    or ``download=False``) a URL mirror and the origin. Processes sharing the cache wait for each other.
    """
    if not entry.available:
        raise WeightsError(f"no public file for {entry.describe()}: {entry.notes}")
    target = cached_path(entry)
    with _cache.file_lock(target.parent / f".{target.name}.lock"):
        if local_file is not None:
            return _import(entry, Path(local_file).expanduser(), target)
        if target.exists():
            trust, digest = _verify_entry(entry, target, f"the cache ({target})")
            return FetchResult(entry, target, "cached", trust, digest)
        mirror = _local_mirror()
        for rel in _mirror_candidates(entry) if mirror is not None else []:
            candidate = mirror / rel
            if candidate.exists():
                _check_content(entry, candidate)
                trust, digest = _verify_entry(entry, candidate, f"the mirror folder ({candidate})")
                return FetchResult(entry, candidate, "mirror", trust, digest)
        why = _no_network(download)
        if why:
            raise _unavailable(entry, target, why)
        return _download(entry, target)


def _import(entry: WeightEntry, src: Path, target: Path) -> FetchResult:
    if not src.exists():
        raise WeightsError(f"--file {src} does not exist")
    _check_content(entry, src)
    trust, digest = _verify_entry(entry, src, f"a local file ({src})")
    tmp = target.with_name(target.name + ".part")
    _remove(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp)
    _remove(target)
    os.replace(tmp, target)
    return FetchResult(entry, target, "imported", trust, digest)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _download(entry: WeightEntry, target: Path) -> FetchResult:
    part = target.with_name(target.name + ".part")
    origin = _from_url_mirror(entry, part) or _from_origin(entry, part)
    try:
        _check_content(entry, part)
        trust, digest = _verify_entry(entry, part, origin)
    except RobustarchError:
        _remove(part)  # a wrong file must not be resumed next time
        raise
    os.replace(part, target)
    log.info("%s: saved %s", entry.describe(), target)
    return FetchResult(entry, target, "downloaded", trust, digest)


def _from_url_mirror(entry: WeightEntry, part: Path) -> str | None:
    base = _mirror_url()
    if base is None:
        return None
    for rel in _mirror_candidates(entry):
        url = f"{base}/{urllib.parse.quote(rel)}"
        try:
            if entry.format == "folder":
                part.mkdir(parents=True, exist_ok=True)
                for name in entry.files:
                    _fetch.http_download(f"{url}/{urllib.parse.quote(name)}", part / name)
            else:
                _fetch.http_download(url, part, desc=entry.file)
            return url
        except _fetch.NotFoundError:
            _remove(part)
        except _fetch.FetchError as err:
            log.warning("mirror %s failed (%s); trying the origin", base, err)
            _remove(part)
            return None
    return None


def _from_origin(entry: WeightEntry, part: Path) -> str:
    desc = str(entry.file)
    if entry.kind == "url":
        _fetch.http_download(str(entry.url), part, desc=desc)
        return str(entry.url)
    if entry.kind == "drive":
        _fetch.drive_download(str(entry.drive_id), part, desc=desc)
        return str(entry.page())
    if entry.kind == "drive-folder" and entry.member is None:
        if part.is_file():
            part.unlink()
        _fetch.drive_folder_download(str(entry.drive_id), part)  # a partial folder from a killed run resumes
        return str(entry.page())
    if entry.kind == "drive-folder":
        listing = _fetch.drive_folder_files(str(entry.drive_id))
        hit = _fetch.match_member(listing, str(entry.member))
        _fetch.drive_download(hit.id, part, desc=desc)
        return f"{_fetch.DRIVE_FOLDER_PAGE.format(id=entry.drive_id)} file {hit.path}"
    archive = fetch_archive(str(entry.archive))
    _fetch.extract_member(archive, str(entry.member), part)
    return f"{archives()[str(entry.archive)]['url']} member {entry.member}"


def fetch_archive(name: str, *, download: bool = True) -> Path:
    """A published archive (e.g. huyvnphan's 2021 zip of all models), downloaded once, checked (no member
    escapes its folder) and verified like a weight file; kept so that its other members need no download."""
    spec = archives()[name]
    target = _cache.weights_dir() / "archives" / name / spec["file"]
    label = f"archive {spec['file']} ({name})"
    with _cache.file_lock(target.parent / f".{target.name}.lock"):
        if not target.exists():
            why = _no_network(download)
            if why:
                raise OfflineError(f"{why}: {label} is not cached at {target}; get it from {spec['url']}")
            part = target.with_name(target.name + ".part")
            _fetch.http_download(spec["url"], part, desc=spec["file"])
            try:
                _fetch.check_archive(part)
                _verify(f"archive/{name}", label, part, spec["url"], spec.get("sha256"), None)
            except RobustarchError:
                _remove(part)
                raise
            os.replace(part, target)
            return target
        _verify(f"archive/{name}", label, target, f"the cache ({target})", spec.get("sha256"), None)
    return target


def fetch_url(url: str, *, download: bool = True) -> Path:
    """A checkpoint given by URL (not in the registry): cached by URL, verified on first use like the rest."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "checkpoint.pt"
    target = _cache.weights_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    with _cache.file_lock(target.parent / f".{target.name}.lock"):
        if not target.exists():
            why = _no_network(download)
            if why:
                raise OfflineError(f"{why}: {url} is not cached at {target}")
            part = target.with_name(target.name + ".part")
            _fetch.http_download(url, part, desc=name)
            try:
                check_weight_file(part)
                _verify(f"url/{url}", name, part, url, None, None)
            except RobustarchError:
                _remove(part)
                raise
            os.replace(part, target)
            return target
        _verify(f"url/{url}", name, target, f"the cache ({target})", None, None)
    return target


def resolve(
    model: str,
    dataset: str,
    source: str | bool | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> Path:
    """The verified local path of ``model``'s weights on ``dataset``.

    ``source``: ``None`` / ``True`` = the entry's default source, a source name or alias (``"torchvision"``,
    ``"IMAGENET1K_V1"``), a path (returned as is), or an ``http(s)`` URL (downloaded into the cache).
    ``download=False`` or ``ROBUSTARCH_OFFLINE=1`` raise :class:`OfflineError` naming the file and where to
    get it when it is not cached.
    """
    if source is None or source is True or looks_like_source(source):
        return fetch(lookup(model, dataset, source), download=download).path  # type: ignore[arg-type]
    if is_url(source):
        return fetch_url(str(source), download=download)
    path = Path(os.fspath(source)).expanduser()  # type: ignore[arg-type]
    if not path.exists():
        raise RobustarchError(f"checkpoint file not found: {path}")
    return path


# --------------------------------------------------------------------------------------------------
# checking the cache, study files


@dataclass(frozen=True)
class CacheCheck:
    entry: WeightEntry
    path: Path
    status: Literal["ok", "mismatch", "unreadable", "missing"]
    message: str


def verify_cache(selected: Iterable[WeightEntry] | None = None) -> list[CacheCheck]:
    """Re-hash every cached file of ``selected`` (all available entries by default) against its pinned or
    recorded hash and re-check its content; entries not cached are ``missing``."""
    out = []
    for entry in selected if selected is not None else entries():
        if not entry.available:
            continue
        path = cached_path(entry)
        if not path.exists():
            out.append(CacheCheck(entry, path, "missing", "not downloaded"))
            continue
        try:
            _check_content(entry, path)
            trust, _ = _verify_entry(entry, path, f"the cache ({path})")
            out.append(CacheCheck(entry, path, "ok", trust))
        except HashMismatchError as err:
            out.append(CacheCheck(entry, path, "mismatch", str(err)))
        except RobustarchError as err:
            out.append(CacheCheck(entry, path, "unreadable", str(err)))
    return out


@dataclass(frozen=True)
class StudyWeights:
    """One model table of a study file and the registry entry its ``weights`` names (None: a local file or
    no weights)."""

    dataset: str
    model_id: str
    weights: object
    entry: WeightEntry | None


def study_weights(study: str | os.PathLike[str]) -> list[StudyWeights]:
    """What a study file's model tables ask of the registry: ``weights = "torchvision"`` (a source name or
    alias) or ``weights = true`` (the default source). ``study`` is a file or a bundled study's name."""
    path = Path(study)
    if not path.is_file():
        bundled = resources.files("robustarch").joinpath("configs", "studies", f"{study}.toml")
        if not bundled.is_file():
            raise RobustarchError(f"study file {study} does not exist (nor is it a bundled study)")
        path = Path(str(bundled))
    import tomllib

    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for table in data.get("datasets", []):
        for m in table.get("models", []):
            weights, model_id = m.get("weights"), m.get("id") or m.get("name")
            entry = None
            if weights is True or looks_like_source(weights):
                entry = lookup(model_id if entries(model=model_id) else m["name"], table["name"], weights)
            out.append(StudyWeights(table["name"], model_id, weights, entry))
    return out
