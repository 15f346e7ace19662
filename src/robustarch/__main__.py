"""``python -m robustarch`` (also what ``torchrun -m robustarch`` runs)."""

import sys

from robustarch.cli import main

sys.exit(main())
