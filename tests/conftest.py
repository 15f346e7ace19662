"""Shared test fixtures. ``../shared`` (beside the repository) holds the conformance fixtures and real data;
tests that need it skip with a clear reason when it is absent (a user's clone has none)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTARCH_SHARED", REPO.parent / "shared"))
SHARED_REASON = (
    f"needs the shared material at {SHARED} (conformance fixtures / real data), which is absent; "
    "set ROBUSTARCH_SHARED to point elsewhere"
)

# One intra-op thread: tests are many small ops, and several tests start subprocesses (torchrun ranks, demo
# workers); with more threads than free cores OpenMP spin-waits and a test runs up to 40x slower.
torch.set_num_threads(1)


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the calling test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{SHARED_REASON} (missing {path})")
    return path


@pytest.fixture
def shared_dir() -> Path:
    return shared_path()


# The longest test files (about 70-130 s each on the 2-core CI machine, measured with --durations=0), run
# first: pytest-xdist's --dist loadfile hands out whole files in collection order, and in alphabetical order
# the demo training file came last and ran alone for its last minute and a half.
LONG_FILES = ("test_autoattack.py", "test_train_demo.py", "test_attacks_fab.py", "test_search.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept
