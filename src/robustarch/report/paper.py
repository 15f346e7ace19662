"""The paper's published numbers (Tables 1-4 of the seed paper), shipped as data in ``paper_results.json``.

Values are kept as the strings the paper prints (so quirks such as Table 3's "39.736" survive) and
converted to fractions in [0, 1] only when compared with measured accuracies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from robustarch.errors import UnknownNameError

PAPER_ATTACKS = ("clean", "fgsm", "rfgsm", "stepll", "pgd")

# A measured dataset is compared with the paper's numbers of this dataset; the report always shows the
# measured dataset's own label (e.g. "CIFAR-10 (JPEG q75)") next to the paper's.
PAPER_COUNTERPART = {
    "cifar10": "cifar10",
    "cifar10-jpeg": "cifar10",
    "cifar100": "cifar100",
    "imagenet": "imagenet",
}


# Architecture overrides that select one of the authors' published configurations rather than change it
# (DenseNAS-Large and R1-R3 come as a net_config folder from the authors' model folders).
PUBLISHED_OVERRIDES = ("net_config",)


def is_random_init(meta: dict[str, Any], weights_hash: str = "") -> bool:
    """Whether a run's model is a random initialisation (no trained weights): the engine records
    ``random_init`` (and ``weights`` None) and names such weights by a state-dict hash ``init-...``."""
    return (
        bool(meta.get("random_init"))
        or weights_hash.startswith("init-")
        or ("weights" in meta and meta["weights"] is None)
    )


def is_paper_configuration(dataset: str, model: str, meta: dict[str, Any], weights_hash: str = "") -> bool:
    """Whether a run evaluated the paper's configuration, so that the paper's printed value may stand beside
    it: an architecture of the paper with no overrides (except :data:`PUBLISHED_OVERRIDES`), trained
    weights, on the paper's dataset (or its stand-in of :data:`PAPER_COUNTERPART`)."""
    overrides = meta.get("overrides") or {}
    return (
        model in paper_data()["models"]
        and dataset in PAPER_COUNTERPART
        and not is_random_init(meta, weights_hash)
        and all(key in PUBLISHED_OVERRIDES for key in overrides)
    )


@dataclass(frozen=True)
class PaperValue:
    """One published accuracy: ``printed`` is the paper's text, ``percent`` its value."""

    table: str
    dataset: str
    model: str
    attack: str
    metric: str  # top1 | top5
    printed: str

    @property
    def percent(self) -> float:
        return float(self.printed)

    @property
    def fraction(self) -> float:
        return float(self.printed) / 100.0


@cache
def paper_data() -> dict[str, Any]:
    """The raw contents of ``paper_results.json``."""
    text = resources.files("robustarch.report").joinpath("paper_results.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def paper_values() -> tuple[PaperValue, ...]:
    """Every published accuracy cell of Tables 1-4."""
    out = []
    for table in paper_data()["tables"]:
        for row in table["rows"]:
            for metric in table["metrics"]:
                for attack, printed in zip(table["attacks"], row[metric], strict=True):
                    out.append(
                        PaperValue(table["id"], table["dataset"], row["model"], attack, metric, printed)
                    )
    return tuple(out)


@cache
def paper_params_m() -> dict[tuple[str, str], str]:
    """Published parameter counts in millions, as printed, keyed by (dataset, model)."""
    out = {}
    for table in paper_data()["tables"]:
        for row in table["rows"]:
            if "params_m" in row:
                out[(table["dataset"], row["model"])] = row["params_m"]
    return out


def paper_value(dataset: str, model: str, attack: str, metric: str) -> PaperValue | None:
    """The published value for a measured dataset (mapped through :data:`PAPER_COUNTERPART`), or None."""
    counterpart = PAPER_COUNTERPART.get(dataset)
    if counterpart is None:
        return None
    for value in paper_values():
        if (value.dataset, value.model, value.attack, value.metric) == (counterpart, model, attack, metric):
            return value
    return None


def paper_attack_params(attack: str) -> dict[str, float] | None:
    """The attack parameters the paper states (Section 3), or None for an attack it did not run."""
    spec = paper_data()["attacks"].get(attack)
    return None if spec is None else dict(spec["params"])


def matches_paper_setting(attack: str, params: dict[str, Any]) -> bool:
    """Whether a run's attack parameters are the ones the paper states, so its published value applies.

    Only the parameters the paper names are compared (extra ones such as ``random_start`` are the
    profile's business and are shown in the provenance).
    """
    wanted = paper_attack_params(attack)
    if wanted is None:
        return False
    for name, value in wanted.items():
        got = params.get(name)
        if not isinstance(got, int | float) or not math.isclose(
            float(got), float(value), rel_tol=1e-9, abs_tol=1e-12
        ):
            return False
    return True


def model_info(model: str) -> dict[str, Any]:
    """Display label, family and method of a model of the paper (empty dict for other models)."""
    return dict(paper_data()["models"].get(model, {}))


def attack_label(attack: str) -> str:
    """How the paper names an attack; other attacks by the title their class declares (``APGD-CE``,
    ``Square``, ``AutoAttack``), an unknown id in capitals."""
    spec = paper_data()["attacks"].get(attack)
    if spec:
        return spec["label"]
    from robustarch import attacks

    if attack in attacks.list_attacks():
        return attacks.attack_class(attack).title
    return attack.upper().replace("_", "-")


def paper_table(table_id: str) -> dict[str, Any]:
    tables = {t["id"]: t for t in paper_data()["tables"]}
    try:
        return tables[table_id]
    except KeyError:
        raise UnknownNameError("paper table", table_id, tables) from None
