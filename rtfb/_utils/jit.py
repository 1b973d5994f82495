"""Numba compilation settings shared by the hot-path kernels.

Kernels are compiled once per machine (``cache=True`` stores them beside the source)
and release the GIL so the acquisition thread keeps running while they execute.
"""

from functools import partial

import numba

jit = partial(numba.njit, cache=True, nogil=True)
"""Serial kernel."""

pjit = partial(numba.njit, cache=True, nogil=True, parallel=True)
"""Kernel whose outer ``numba.prange`` loop runs on all cores."""

prange = numba.prange
