"""Training networks of the zoo with the published recipes (``robustarch train``), standard or adversarial
(``pgd-at``, ``trades``, ``fast-at``), and the offline demo (``robustarch demo``). See docs/training.md."""

from robustarch.runtime import exit_process
from robustarch.train.adversarial import AdversarialTraining, adversarial_loss, perturb, start_noise
from robustarch.train.overfitting import RobustnessCheck, describe_overfitting, detect_overfitting, measure
from robustarch.train.recipes import RECIPES, Augment, Recipe, default_recipe, get_recipe, list_recipes
from robustarch.train.trainer import (
    TrainConfig,
    Trainer,
    TrainResult,
    atomic_save,
    dataset_hash,
    hold_out,
    init_distributed,
    refuse_other_run,
    train,
)

__all__ = [
    "RECIPES",
    "AdversarialTraining",
    "Augment",
    "Recipe",
    "RobustnessCheck",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "adversarial_loss",
    "atomic_save",
    "dataset_hash",
    "default_recipe",
    "describe_overfitting",
    "detect_overfitting",
    "exit_process",
    "get_recipe",
    "hold_out",
    "init_distributed",
    "list_recipes",
    "measure",
    "perturb",
    "refuse_other_run",
    "start_noise",
    "train",
]
