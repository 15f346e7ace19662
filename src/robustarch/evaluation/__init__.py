"""Evaluation: one spec for any model, data and attacks, run by one engine into the results store, from three
front ends (``robustarch evaluate``, study files, :func:`evaluate`); distributed runs and reliability checks
(``docs/api.md``, ``docs/study.md``).

>>> from robustarch.evaluation import evaluate, load_study, run_study
>>> evaluate(model, (x, y), preset="standard").table()
>>> run_study(load_study("my_study.toml"))        # only what the store lacks; resumable
"""

from robustarch.data import DataSource
from robustarch.evaluation.api import Results, benchmark, evaluate
from robustarch.evaluation.engine import (
    AttackPlan,
    Engine,
    ModelJob,
    adv_metric_for,
    chunk_seed,
    load_data,
    may_skip,
    resolve_device,
)
from robustarch.evaluation.runner import EvaluationInterrupted, run_specs
from robustarch.evaluation.spec import (
    AttackOverrides,
    DataRef,
    EvaluationSpec,
    ModelRef,
    apply_overrides,
    resolve_attacks,
)
from robustarch.evaluation.study import Study, StudyError, load_study, run_study, study_status, toml_value

__all__ = [
    "AttackOverrides",
    "AttackPlan",
    "DataRef",
    "DataSource",
    "Engine",
    "EvaluationInterrupted",
    "EvaluationSpec",
    "ModelJob",
    "ModelRef",
    "Results",
    "Study",
    "StudyError",
    "adv_metric_for",
    "apply_overrides",
    "benchmark",
    "chunk_seed",
    "evaluate",
    "load_data",
    "load_study",
    "may_skip",
    "resolve_attacks",
    "resolve_device",
    "run_specs",
    "run_study",
    "study_status",
    "toml_value",
]
