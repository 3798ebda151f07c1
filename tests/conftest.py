import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


@pytest.fixture
def cifar_subset():
    if not CIFAR_SUBSET.exists():
        raise FileNotFoundError(
            f"{CIFAR_SUBSET} is missing: the tests expect ../shared beside the checkout."
        )
    return CIFAR_SUBSET
