"""Float tolerances that hold on every CPU we run on, each one saying what it allows.

Our machines come with AVX-512 and with AVX2 only. Float32 kernels vectorise, and so
associate their sums, differently on the two kinds, and even between two rows of one batch
on one CPU: a float32 result is reproducible only to its round-off, about
``EPS32 = 1.2e-7`` relative per operation, growing with the length of the reductions behind
it. A relative tolerance alone means nothing for a value at or near zero (a loss of 0, a
coordinate of a unit vector, a mean near 0), so every float32 tolerance has an absolute floor
on the scale of the values compared. ``python -m pytest --isa avx2`` runs the suite on the
AVX2 kind's kernels (tests/conftest.py).
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)

# A float32 value of order 1 (a loss, a probability, a unit vector, a normalised feature)
# against a float64 reference or another float32 path: ~80 EPS32 relative covers reductions of
# a few thousand terms; 1e-6 absolute (~8 EPS32 of a value of 1) covers values near zero.
F32 = dict(rtol=1e-5, atol=1e-6)
# The same, after a chain of float32 layers or optimiser steps (a network's output or a
# gradient-descent update, where round-off of every layer compounds): ~800 EPS32.
F32_DEEP = dict(rtol=1e-4, atol=1e-5)
# Float64 on both sides (a float64 kernel against a float64 plain-loop reference): ~1e6 EPS64,
# far below any float32 effect, with an absolute floor for values at zero.
F64 = dict(rtol=1e-10, atol=1e-12)
