"""Robust architecture search and architectures under one protocol (docs/search.md).

* :mod:`robustarch.search.supernet` / :mod:`robustarch.search.search`: ``robustarch search``, a
  differentiable search over the DARTS cell space with partial channel connections (PC-DARTS) and an
  adversarial inner step, writing ``OUT/genotype.json`` for ``zoo.build("darts", ..., genotype=...)``.
* :mod:`robustarch.search.protocol`: ``robustarch compare``, every listed architecture trained with the same
  (adversarial) recipe at a matched parameter count, evaluated with the same attacks, seeds as replicates.
"""

from robustarch.search.protocol import (
    Architecture,
    Protocol,
    load_protocol,
    match_parameters,
    plan,
    protocol_table,
    render_table,
    run_protocol,
    standard_twin,
)

__all__ = [
    "Architecture",
    "Protocol",
    "load_protocol",
    "match_parameters",
    "plan",
    "protocol_table",
    "render_table",
    "run_protocol",
    "standard_twin",
]
