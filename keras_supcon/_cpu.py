"""CPU kernel settings, applied through the environment before TensorFlow is imported.

Standard library only: :mod:`keras_supcon` calls :func:`prefer_onednn` before it imports
TensorFlow, and the test suite and benchmarks call :func:`cap_isa` before theirs.

- **oneDNN on every x86 CPU.** TensorFlow's x86 wheels turn their oneDNN kernels on by
  default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (TensorFlow 2.9's
  release notes; ``TF_ENABLE_ONEDNN_OPTS`` overrides it). On an AVX2-only CPU, convolutions
  then run Eigen's kernels, whose training step on small feature maps is pathologically
  slow: at 32x32, ResNet-50's conv5 stage works on 1x1 and 2x2 maps (512-2048 channels),
  where Eigen's forward + backward takes 0.4-0.8 s a layer at batch 2 x 64 against
  0.02-0.05 s in oneDNN's AVX2 kernels; the whole step took 3.8x DenseNet-201's
  (``python -m benchmarks.backbone_step``, docs/performance.md).
  oneDNN's AVX2 kernels do not have that cliff, so the package asks for oneDNN unless the
  user set ``TF_ENABLE_ONEDNN_OPTS`` (it only takes effect if TensorFlow is not yet imported).
- **The slow machine kind, emulated.** Our 2-core machines come with AVX-512 and with AVX2
  only, and float32 kernels vectorise differently on the two (results differ in the last
  bits). :func:`cap_isa` ``("avx2")`` limits oneDNN's and XLA's code generation to AVX2, so
  an AVX-512 machine runs the kernels (and the round-off) of the AVX2 kind:
  ``python -m pytest --isa avx2`` (tests/conftest.py). Both variables were checked to take
  effect: ``ONEDNN_VERBOSE=1`` reports ``brg_conv_fwd:avx2`` instead of ``:avx512_core``, and
  XLA's object code (``--xla_dump_to``) holds no ``zmm`` register.
"""

import os

ISA_CAPS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"},
}


def prefer_onednn():
    """Ask TensorFlow for its oneDNN kernels on every x86 CPU, unless the user chose."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def cap_isa(isa, environ=None):
    """Limit oneDNN's and XLA's kernels to ``isa`` (a key of :data:`ISA_CAPS`) in
    ``environ``: by default this process's environment (call it before TensorFlow / JAX are
    imported; the processes it starts inherit it), or the dict a subprocess will get."""
    if isa not in ISA_CAPS:
        raise ValueError(f"isa must be one of {sorted(ISA_CAPS)}; got {isa!r}")
    environ = os.environ if environ is None else environ
    for var, value in ISA_CAPS[isa].items():
        if var == "XLA_FLAGS":
            flags = environ.get(var, "").split()
            value = " ".join([f for f in flags if not f.startswith("--xla_cpu_max_isa=")] +
                             [value])
        environ[var] = value


def cpu_flags():
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (``None`` off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    return flags


def cpu_kind():
    """``"avx512"`` where the CPU has AVX-512F, ``"avx2"`` where it has AVX2 only, else
    ``"other"`` (what ``grep -c avx512f /proc/cpuinfo`` tells; ``"unknown"`` off Linux)."""
    flags = cpu_flags()
    if flags is None:
        return "unknown"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"
