"""The CPU kernel's loop for large float layers, compiled (Numba): one pass, Flower's arithmetic.

NumPy has no axpy: ``acc += w * x`` costs a product into scratch and a sum into the
accumulator, two calls and two passes for each block of each update. torch's one-pass
``add_(x, alpha=w)`` rounds once where Flower rounds twice, and still reads and writes the
accumulator once per update. Here one compiled loop adds eight updates at a time into a
value held in a register::

    v = acc[i]; v += w1 * x1[i]; v += w2 * x2[i]; ... ; acc[i] = v

so the accumulator is touched once per eight updates, and the updates stream past from
memory as eight parallel reads. Each product is rounded to the layer's dtype and each sum in
update order, exactly NumPy's ``acc += x * dtype(w)``: the mean is bit-identical to Flower's,
whatever the group, chunk, block or thread count (floating-point contraction into FMA is off,
as Numba compiles without ``fastmath``). Measured on 100 x 1 M float32 (2-core EPYC): 1.15x
the time of a pure read of the updates, against 1.7x for the NumPy loop and 1.3-1.4x for
torch's ``add_`` (docs/aggregation.md).

The squared norms are summed per chunk of each group right after the group is added, while
its eight chunks are still in L2. Only that sum may be reassociated (it is a check, not the
mean), and only ``reassoc``: NaN and Inf must survive it, since they are how a non-finite
update shows.

Numba compiles on the first call (about 2 s) and caches the machine code beside this module
(or in the user's cache directory where that is read-only), so later processes load it.
This module is imported only when a round has a layer large enough to need it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

from server.errors import AggregationError

log = logging.getLogger(__name__)

# Values per chunk: a group's eight chunks (256 KiB of float32) stay in L2 for the norms,
# and the streams stay long enough for the prefetchers. Measured best of 2-16 Ki.
CHUNK = 1 << 13


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with an on-disk cache where one can be kept, without where none can."""

    def decorate(fn: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, boundscheck=False, **options)(fn)
        except RuntimeError as exc:  # pragma: no cover - no writable cache directory anywhere
            log.warning("Numba cannot cache %s (%s); it compiles once per process", fn.__name__, exc)
            return numba.njit(nogil=True, boundscheck=False, **options)(fn)

    return decorate


def _data_of_typing(typingctx: Any, address: Any, like: Any) -> Any:  # pragma: no cover - runs at compile time
    """``_data_of(address, like)``: the integer ``address`` as a pointer to ``like``'s element type."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    pointer: Any = types.CPointer(like.dtype)  # type: ignore[no-untyped-call]
    return pointer(address, like), codegen


_data_of: Any = intrinsic(_data_of_typing)
_carray: Any = numba.carray  # type: ignore[attr-defined]


@_jit(fastmath={"reassoc"})
def _sum_sq(x: Any) -> Any:  # pragma: no cover - compiled; run through weighted_sum
    s = x[0] - x[0]  # zero in the layer's dtype (NaN where x[0] is not finite, as the sum would be)
    for i in range(x.size):
        s += x[i] * x[i]
    return s


@_jit()
def _add8(
    o: Any, a: Any, b: Any, c: Any, d: Any, e: Any, f: Any, g: Any, h: Any, w: Any, k: int
) -> None:  # pragma: no cover - compiled; run through weighted_sum
    # Indices from 0 over views: LLVM then sees no negative index to wrap, and vectorises.
    wa, wb, wc, wd, we, wf, wg, wh = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4], w[k + 5], w[k + 6], w[k + 7]
    for i in range(o.size):
        v = o[i]
        v += wa * a[i]
        v += wb * b[i]
        v += wc * c[i]
        v += wd * d[i]
        v += we * e[i]
        v += wf * f[i]
        v += wg * g[i]
        v += wh * h[i]
        o[i] = v


@_jit()
def _weighted_sum(
    out: Any, addresses: Any, size: int, w: Any, start: int, stop: int, sq: Any, norms: bool, chunk: int
) -> None:  # pragma: no cover - compiled; run through weighted_sum
    updates = len(addresses)
    xs = [_carray(_data_of(addresses[k], out), size) for k in range(updates)]
    for lo in range(start, stop, chunk):
        hi = min(lo + chunk, stop)
        o = out[lo - start : hi - start]
        x = xs[0][lo:hi]
        w0 = w[0]
        for i in range(o.size):
            o[i] = w0 * x[i]
        if norms:
            sq[0] += _sum_sq(x)
        k = 1
        while k + 8 <= updates:
            a, b, c, d = xs[k][lo:hi], xs[k + 1][lo:hi], xs[k + 2][lo:hi], xs[k + 3][lo:hi]
            e, f, g, h = xs[k + 4][lo:hi], xs[k + 5][lo:hi], xs[k + 6][lo:hi], xs[k + 7][lo:hi]
            _add8(o, a, b, c, d, e, f, g, h, w, k)
            if norms:
                sq[k] += _sum_sq(a)
                sq[k + 1] += _sum_sq(b)
                sq[k + 2] += _sum_sq(c)
                sq[k + 3] += _sum_sq(d)
                sq[k + 4] += _sum_sq(e)
                sq[k + 5] += _sum_sq(f)
                sq[k + 6] += _sum_sq(g)
                sq[k + 7] += _sum_sq(h)
            k += 8
        while k < updates:
            x = xs[k][lo:hi]
            wk = w[k]
            for i in range(o.size):
                o[i] += wk * x[i]
            if norms:
                sq[k] += _sum_sq(x)
            k += 1


class CompiledLayers:
    """Some layers of every update, handed to the compiled loop once per aggregation (no copies).

    The loop gets each layer's K updates as an array of their data addresses (about 1 µs an
    update to collect; a Numba typed list of the arrays cost 4.5). They stay valid because
    this object holds the arrays, which must be C-contiguous, one-dimensional and of the
    layer's dtype (``fedavg`` hands it raveled, checked layers).
    """

    def __init__(
        self, flats: Sequence[Sequence[npt.NDArray[np.generic]]], layers: Sequence[int], factors: Sequence[float]
    ) -> None:
        self._flats = flats  # keeps the memory the addresses point to
        self._addresses: dict[int, npt.NDArray[np.intp]] = {}
        self._weights: dict[int, npt.NDArray[np.floating]] = {}
        for j in layers:
            arrays = [update[j] for update in flats]
            if not all(a.flags.c_contiguous and a.ndim == 1 for a in arrays):
                raise AggregationError(f"layer {j}: the compiled loop reads flat C-contiguous arrays only")
            self._addresses[j] = np.fromiter(
                (a.__array_interface__["data"][0] for a in arrays), dtype=np.intp, count=len(arrays)
            )
            # Flower multiplies by the weight as the layer's dtype (NumPy's promotion of a Python float).
            self._weights[j] = np.array(factors, dtype=arrays[0].dtype)

    def holds(self, layer: int) -> bool:
        return layer in self._addresses

    def weighted_sum(
        self, out: npt.NDArray[np.floating], layer: int, start: int, sq: npt.NDArray[np.float64] | None
    ) -> None:
        """``out = sum_k w_k * x_k[start:start + len(out)]``; ``sq[k] += |x_k block|^2`` when given."""
        norms = sq is not None
        _weighted_sum(
            out,
            self._addresses[layer],
            self._flats[0][layer].size,
            self._weights[layer],
            start,
            start + out.size,
            sq if norms else _NO_NORMS,
            norms,
            CHUNK,
        )


_NO_NORMS = np.zeros(0, dtype=np.float64)
