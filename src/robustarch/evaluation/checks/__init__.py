"""Reliability checks (``../shared/docs/attacks.md``, "Checks that make an evaluation trustworthy"), stored as
flags beside the runs they concern (``Store.add_flag``): :func:`model_checks` need the model
(:mod:`~robustarch.evaluation.checks.model`), :func:`store_checks` read only stored results
(:mod:`~robustarch.evaluation.checks.stored`). A check writes one flag per (run, check name); re-running it
replaces the flag, so checks are idempotent."""

from robustarch.evaluation.checks.model import model_checks
from robustarch.evaluation.checks.stored import run_traits, store_checks

__all__ = ["model_checks", "run_traits", "store_checks"]
