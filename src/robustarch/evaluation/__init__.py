"""The evaluation engine, study files and distributed runs (``docs/study.md``).

>>> from robustarch.evaluation import load_study, run_study
>>> run_study(load_study("my_study.toml"))        # only what the store lacks; resumable
"""

from robustarch.evaluation.engine import (
    AttackPlan,
    DataSource,
    Engine,
    ModelJob,
    ModelSource,
    adv_metric_for,
    chunk_seed,
    load_data,
    may_skip,
)
from robustarch.evaluation.study import Study, StudyError, load_study, run_study, study_status

__all__ = [
    "AttackPlan",
    "DataSource",
    "Engine",
    "ModelJob",
    "ModelSource",
    "Study",
    "StudyError",
    "adv_metric_for",
    "chunk_seed",
    "load_data",
    "load_study",
    "may_skip",
    "run_study",
    "study_status",
]
