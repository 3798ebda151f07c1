import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _threads_per_worker():
    """Under pytest-xdist, each worker gets its share of the cores: TensorFlow's
    and OpenMP's thread pools (t-SNE) sized for the whole machine in every worker
    would compete for the same cores (busy-waiting OpenMP threads most of all)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


if "PYTEST_XDIST_WORKER" in os.environ:
    # Read when the libraries start, so before the first import of TensorFlow / sklearn.
    _n = str(_threads_per_worker())
    for _var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, _n)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each holds TensorFlow, ~1 GB)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture
def cifar_subset():
    if not CIFAR_SUBSET.exists():
        raise FileNotFoundError(
            f"{CIFAR_SUBSET} is missing: the tests expect ../shared beside the checkout."
        )
    return CIFAR_SUBSET
