"""The suite's settings, read before any test module imports TensorFlow or JAX.

``python -m pytest --isa avx2`` (or ``KERAS_SUPCON_TEST_ISA=avx2``) runs the whole suite, its
subprocesses included, on the kernels of our AVX2-only machine kind (keras_supcon/_cpu.py): the
slow mode, run before every stop. The header names the CPU and the mode.
"""

import importlib.util
import os
import sys
from pathlib import Path

# keras_supcon/_cpu.py alone: importing the package would import TensorFlow before the cap.
_spec = importlib.util.spec_from_file_location(
    "keras_supcon_cpu", Path(__file__).resolve().parents[1] / "keras_supcon" / "_cpu.py")
_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cpu)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_cpu.prefer_onednn()  # as the package does, also for test modules that import TensorFlow first


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

import pytest  # noqa: E402

# 1,000 real CIFAR-10 images committed with the tests (tests/data/README.md)
CIFAR_TINY = Path(__file__).resolve().parent / "data" / "cifar10_tiny.npz"
ISA_ENV = "KERAS_SUPCON_TEST_ISA"


def pytest_addoption(parser):
    parser.addoption("--isa", choices=sorted(_cpu.ISA_CAPS), default=None,
                     help="cap oneDNN's and XLA's CPU kernels at this ISA: 'avx2' runs the "
                          f"kernels of the AVX2-only machine kind (default: ${ISA_ENV} or "
                          "native)")


# The one thing the emulation cannot do. TensorFlow sends bfloat16 ops to oneDNN when the CPU
# has AVX512F (an AVX2 CPU falls back to Eigen's kernels), and oneDNN capped at AVX2 has no
# bfloat16 kernels: the process dies (segmentation fault in MatMul).
BF16_EMULATION_REASON = (
    "--isa avx2 on an AVX-512 CPU cannot run TensorFlow's bfloat16 ops (TensorFlow sends them "
    "to oneDNN, capped at AVX2 and without bfloat16 kernels); run in the native mode, and on "
    "a real AVX2 CPU, where TensorFlow falls back to Eigen")
# The same for float16 on a CPU with AVX512_FP16 (seen on an Intel Xeon with AMX, 2026-12-02:
# segmentation fault in an eager float16 MatMul; an AVX-512 CPU without it runs them).
FP16_EMULATION_REASON = BF16_EMULATION_REASON.replace("bfloat16", "float16").replace(
    "an AVX-512 CPU", "a CPU with AVX512_FP16")


def pytest_configure(config):
    """Runs in the controller and in every xdist worker before the test modules are
    imported, so TensorFlow and JAX (and the processes tests start) see the cap."""
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist --dist loadgroup")
    config.addinivalue_line("markers", "bfloat16: runs TensorFlow bfloat16 ops "
                            "(not under --isa avx2 on an AVX-512 CPU: BF16_EMULATION_REASON)")
    config.addinivalue_line("markers", "float16: runs TensorFlow float16 matmuls "
                            "(not under --isa avx2 on a CPU with AVX512_FP16: "
                            "FP16_EMULATION_REASON)")
    isa = config.getoption("--isa") or os.environ.get(ISA_ENV, "native")
    if "tensorflow" in sys.modules or "jax" in sys.modules:
        raise pytest.UsageError("--isa must be applied before TensorFlow / JAX are imported")
    _cpu.cap_isa(isa)
    os.environ[ISA_ENV] = isa  # the workers and subprocesses inherit the mode


def _module_fixtures(item):
    """The module-scoped fixtures (a trained run, a sweep, ...) ``item`` uses, each as
    ``name`` or ``name=param``: one parametrised fixture is one setup per parameter.
    (No ``]`` in a group's name: pytest-xdist reads ``...]`` at a node id's end as a
    parameter, not a group.)"""
    info = getattr(item, "_fixtureinfo", None)
    params = getattr(getattr(item, "callspec", None), "params", {})
    return {name if name not in params else f"{name}={params[name]}".replace("]", ")")
            for name, defs in (info.name2fixturedefs.items() if info else ())
            if defs[-1].scope == "module"}


def _fixture_groups(items):
    """``{item: group}``: the tests that share a module-scoped fixture setup, directly or
    through other tests, form one group, named ``module::fixture`` after one of them
    (union-find over the fixtures); tests that use none are in no group."""
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of = {item: sorted(f"{item.module.__name__}::{k}" for k in _module_fixtures(item))
               for item in items}
    for keys in keys_of.values():
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
    return {item: root(keys[0]) for item, keys in keys_of.items() if keys}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    if os.environ.get(ISA_ENV) == "avx2" and _cpu.cpu_kind() == "avx512":
        fp16 = "avx512_fp16" in _cpu.cpu_flags()
        for item in items:
            if "bfloat16" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=BF16_EMULATION_REASON))
            elif fp16 and "float16" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=FP16_EMULATION_REASON))
    # --dist loadgroup (pyproject.toml): the tests that share a module-scoped fixture setup
    # (a trained run) run on one worker, so it is built once; every other test, and the tests
    # of another fixture of the same module, are scheduled on their own, so a module of long
    # independent jobs (the distributed ones) spreads over the workers. (pytest 9.2 silently
    # ignores the groups: pytest-xdist#1386; pyproject pins pytest below it.)
    for item, group in _fixture_groups(items).items():
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_report_header(config):
    return (f"cpu: {_cpu.cpu_kind()}; kernels: --isa {os.environ.get(ISA_ENV)} "
            f"(ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}, "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '-')}, "
            f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '-')})")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than the cores, at most 4 (each holds TensorFlow,
    ~1-2 GB). A worker that waits on a test's subprocesses (the distributed and JAX jobs)
    leaves its core to the others: on 2 cores the suite took 483 s with 3 workers against
    511 s with 2 (normal mode, AVX-512, one run each)."""
    return max(1, min((os.cpu_count() or 1) + 1, 4))


@pytest.fixture(scope="session")
def cifar_tiny():
    """Path of the committed real-image fixture (800 train / 200 test CIFAR-10 images)."""
    return CIFAR_TINY
