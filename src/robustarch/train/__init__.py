"""Training networks of the zoo with the published recipes (``robustarch train``), and the offline demo
(``robustarch demo``). See docs/training.md."""

from robustarch.runtime import exit_process
from robustarch.train.recipes import RECIPES, Augment, Recipe, default_recipe, get_recipe, list_recipes
from robustarch.train.trainer import TrainConfig, Trainer, TrainResult, dataset_hash, train

__all__ = [
    "RECIPES",
    "Augment",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dataset_hash",
    "default_recipe",
    "exit_process",
    "get_recipe",
    "list_recipes",
    "train",
]
