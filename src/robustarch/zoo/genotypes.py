"""Published architectures as data: DARTS-space genotypes and DenseNAS ``net_config`` strings.

The facts live in ``configs/architectures.json`` (a copy of the conformance fixtures' architecture file,
each entry with the repository, commit and line it was read from) and ``configs/robust_genotypes.json``
(cells found by robust architecture search: AdvRush, RACL, E2RNAS, with their citation and source; and
ABanditNAS, recorded but not a DARTS-space genotype); this module turns them into typed objects. A
:class:`Genotype` prints and parses in the authors' own ``Genotype(normal=[...], ...)`` notation, so a
genotype copied from any DARTS-derived repository can be pasted in as a string, and reads and writes the
JSON file ``robustarch search`` produces (``genotype.json``), so ``genotype="runs/s/genotype.json"`` is
accepted wherever a genotype is.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo.operations import OPS

# Citations of the papers whose search produced each architecture.
CITATIONS: dict[str, str] = {
    "DARTS_V2": "Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019",
    "PDARTS": "Chen, Xie, Wu, Tian. Progressive Differentiable Architecture Search: Bridging the Depth Gap "
    "between Search and Evaluation. ICCV 2019",
    "PC_DARTS_cifar": "Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel Connections for "
    "Memory-Efficient Architecture Search. ICLR 2020",
    "PC_DARTS_image": "Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel Connections for "
    "Memory-Efficient Architecture Search. ICLR 2020",
    "NSGANet": "Lu, Whalen, Boddeti, Dhebar, Deb, Goodman, Banzhaf. NSGA-Net: Neural Architecture Search "
    "using Multi-Objective Genetic Algorithm. GECCO 2019",
    "DenseNAS": "Fang, Sun, Zhang, Li, Liu, Wang. Densely Connected Search Space for More Flexible Neural "
    "Architecture Search. CVPR 2020",
}

# Names the authors' repositories also use for the same genotypes.
ALIASES: dict[str, str] = {"DARTS": "DARTS_V2", "PCDARTS": "PC_DARTS_cifar"}

Edge = tuple[str, int]

ARCHITECTURES_FILE = Path(__file__).with_name("configs") / "architectures.json"
# robust-NAS cells (kept apart: architectures.json must stay equal to the conformance fixtures' copy)
ROBUST_GENOTYPES_FILE = Path(__file__).with_name("configs") / "robust_genotypes.json"
GENOTYPE_FILE_FORMAT = 1  # version of the genotype.json files written by save_genotype_file


@dataclass(frozen=True)
class Genotype:
    """A DARTS-style cell pair: for each intermediate node two ``(op_name, input_index)`` edges, in node
    order. Input 0 is the cell two back, 1 the previous cell, ``k >= 2`` intermediate node ``k - 2``;
    ``*_concat`` lists the states concatenated to form the cell output."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        # normalise lists (from JSON or literal parsing) into hashable tuples
        for name in ("normal", "reduce"):
            object.__setattr__(self, name, tuple((str(op), int(i)) for op, i in getattr(self, name)))
        for name in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))

    def __str__(self) -> str:
        def edges(es: tuple[Edge, ...]) -> str:
            return "[" + ", ".join(f"({op!r}, {i})" for op, i in es) + "]"

        return (
            f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )

    @classmethod
    def from_string(cls, text: str) -> Genotype:
        """Parse ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)``.

        ``range(2, 6)`` is accepted for a concat list, as the DARTS repositories write it. Only literals
        are evaluated, never code.
        """
        match = re.fullmatch(r"\s*Genotype\s*\((.*)\)\s*", text, flags=re.DOTALL)
        if not match:
            raise RobustarchError(
                f"not a genotype string (expected 'Genotype(normal=..., ...)'): {text[:80]!r}"
            )
        body = re.sub(
            r"range\(\s*(\d+)\s*,\s*(\d+)\s*\)", lambda m: str(list(range(int(m[1]), int(m[2])))), match[1]
        )
        try:
            call = ast.parse(f"f({body})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            fields = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError, AssertionError) as err:
            raise RobustarchError(f"cannot parse genotype string {text[:80]!r}: {err}") from None
        expected = {"normal", "normal_concat", "reduce", "reduce_concat"}
        if set(fields) != expected:
            raise RobustarchError(
                f"a genotype needs exactly the fields {sorted(expected)}, got {sorted(fields)}"
            )
        genotype = cls(**fields)
        genotype.validate()
        return genotype

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (lists), the ``"genotype"`` object of a genotype.json file."""
        return {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, fields: Any) -> Genotype:
        """The inverse of :meth:`to_dict`; validated. Refuses anything but the four fields."""
        expected = {"normal", "normal_concat", "reduce", "reduce_concat"}
        if not isinstance(fields, dict) or set(fields) != expected:
            got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise RobustarchError(f"a genotype needs exactly the fields {sorted(expected)}, got {got}")
        try:
            genotype = cls(**fields)
        except (TypeError, ValueError) as err:
            raise RobustarchError(f"malformed genotype fields: {err}") from None
        return genotype.validate()

    def validate(self) -> Genotype:
        """Raise :class:`RobustarchError` unless every op is in ``OPS`` and every index points to a state
        that exists when it is read."""
        for cell in ("normal", "reduce"):
            edges: tuple[Edge, ...] = getattr(self, cell)
            concat: tuple[int, ...] = getattr(self, f"{cell}_concat")
            if not edges or len(edges) % 2:
                raise RobustarchError(f"{cell} cell needs two edges per node, got {len(edges)} edges")
            steps = len(edges) // 2
            for k, (op, index) in enumerate(edges):
                if op not in OPS:
                    raise UnknownNameError("operation", op, OPS)
                node = k // 2
                if not 0 <= index < node + 2:
                    raise RobustarchError(
                        f"{cell} edge {k} ({op!r}, {index}): node {node + 2} "
                        f"can only read states 0..{node + 1}"
                    )
            if not concat:
                raise RobustarchError(f"{cell}_concat is empty")
            bad = [i for i in concat if not 0 <= i < steps + 2]
            if bad:
                raise RobustarchError(
                    f"{cell}_concat {list(concat)} names states outside 0..{steps + 1}: {bad}"
                )
        return self

    @property
    def steps(self) -> int:
        return len(self.normal) // 2


@dataclass(frozen=True)
class DenseNASConfig:
    """A DenseNAS architecture: the authors' ``net_config`` string and the search space it belongs to."""

    name: str
    net_config: str
    net_type: str  # "mbv2" (MobileNetV2-based space, MBV2_Net) or "res" (ResNet-based space, RES_Net)
    source: dict[str, Any]


@cache
def _architectures() -> dict[str, Any]:
    # the JSON files ship inside the package (package-data), beside this module
    published = json.loads(ARCHITECTURES_FILE.read_text("utf-8"))
    robust = json.loads(ROBUST_GENOTYPES_FILE.read_text("utf-8"))
    clash = sorted((set(published) & set(robust)) - {"_format"})
    if clash:  # pragma: no cover - a packaging mistake, caught by the tests
        raise RuntimeError(f"genotype names defined twice: {clash}")
    return {**published, **{k: v for k, v in robust.items() if k != "_format"}}


def _genotype_names() -> list[str]:
    return [
        k for k, v in _architectures().items() if not k.startswith("_") and v.get("kind") == "darts_genotype"
    ]


def genotype_names() -> list[str]:
    """Names accepted by :func:`get_genotype` (aliases included)."""
    return sorted([*_genotype_names(), *ALIASES])


@cache
def get_genotype(name: str) -> Genotype:
    """A published genotype by the name its authors gave it (``DARTS``, ``PDARTS``, ``PC_DARTS_image``,
    ``ADVRUSH``, ``RACL``, ``E2RNAS``...)."""
    key = ALIASES.get(name, name)
    entry = _architectures().get(key, {})
    if entry.get("kind") == "non_darts_cells":
        raise RobustarchError(f"{name} is not a DARTS-space genotype: {entry['why_not_darts']}")
    if key not in _genotype_names():
        raise UnknownNameError("genotype", name, genotype_names())
    g = _architectures()[key]["genotype"]
    return Genotype(g["normal"], g["normal_concat"], g["reduce"], g["reduce_concat"]).validate()


def genotype_source(name: str) -> dict[str, Any]:
    """Where a published genotype was read from (repo, commit, file, lines)."""
    get_genotype(name)
    return dict(_architectures()[ALIASES.get(name, name)]["source"])


def genotype_citation(name: str) -> str:
    """The paper whose search produced a published genotype."""
    get_genotype(name)
    key = ALIASES.get(name, name)
    return str(_architectures()[key].get("paper") or CITATIONS[key])


def is_genotype_file(value: object) -> bool:
    """Whether ``value`` names a genotype JSON file (a path object, or a string ending in ``.json``)."""
    return isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip().endswith(".json"))


def load_genotype_file(path: str | os.PathLike[str]) -> Genotype:
    """The genotype in a JSON file: a ``robustarch search`` result (``{"genotype": {...}, ...}``) or the
    four fields alone."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise RobustarchError(
            f"genotype file {p} does not exist (robustarch search writes OUT/genotype.json)"
        )
    try:
        doc = json.loads(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RobustarchError(f"cannot read genotype file {p}: {err}") from None
    fields = doc.get("genotype", doc) if isinstance(doc, dict) else doc
    try:
        return Genotype.from_dict(fields)
    except RobustarchError as err:
        raise RobustarchError(f"{p}: {err}") from None


def save_genotype_file(path: str | os.PathLike[str], genotype: Genotype, **metadata: Any) -> Path:
    """Write ``genotype`` (plus JSON-able ``metadata``, e.g. how it was searched) as a genotype.json file,
    atomically; :func:`load_genotype_file` reads it back equal."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": GENOTYPE_FILE_FORMAT, "genotype": genotype.validate().to_dict(), "string": str(genotype)}
    doc.update(metadata)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", "utf-8")
    os.replace(tmp, p)
    return p


def as_genotype(genotype: Genotype | str | os.PathLike[str]) -> Genotype:
    """Accept a :class:`Genotype`, a published name, a ``Genotype(...)`` string, or the path of a genotype
    JSON file (``robustarch search``'s ``OUT/genotype.json``)."""
    if isinstance(genotype, Genotype):
        return genotype.validate()
    if is_genotype_file(genotype):
        return load_genotype_file(genotype)  # type: ignore[arg-type]
    if isinstance(genotype, str):
        if genotype.lstrip().startswith("Genotype"):
            return Genotype.from_string(genotype)
        return get_genotype(genotype)
    raise RobustarchError(
        "genotype must be a Genotype, a name, a 'Genotype(...)' string or a genotype .json file, got "
        f"{type(genotype).__name__}"
    )


def densenas_names() -> list[str]:
    """DenseNAS models the package knows by name, including those whose config is not public."""
    return sorted(k for k, v in _architectures().items() if v.get("kind") == "densenas_net_config")


def get_densenas_config(name: str) -> DenseNASConfig:
    """The ``net_config`` of a published DenseNAS model (``DenseNAS-A``/``-B``/``-C``).

    DenseNAS-Large and R1-R3 are known names, but their ``net_config`` ships only with the authors' released
    weights (Google Drive); asking for them explains how to build them from that folder.
    """
    if name not in densenas_names():
        raise UnknownNameError("DenseNAS model", name, densenas_names())
    entry = _architectures()[name]
    if not entry.get("net_config"):
        raise RobustarchError(
            f"the net_config of {name} is not public: it ships only inside the authors' model folder "
            "(net_config + weights.pt, linked from the JaminFong/DenseNAS README). Build it with "
            "robustarch.zoo.build('densenas', 'imagenet', net_config='<that folder>')."
        )
    return DenseNASConfig(name, entry["net_config"], entry["net_type"], dict(entry["source"]))
