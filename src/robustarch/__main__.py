"""``python -m robustarch`` (also what ``torchrun -m robustarch`` runs)."""

from robustarch.cli import entry

entry()
