"""Zero-copy views of ``.npy`` bytes, the serialisation Flower uses for every array of an update.

``np.load`` copies each array out of its bytes (and ``BytesIO`` copies them once more); an
aggregation only reads the values, so a read-only view past the header is enough. The
header is parsed and checked here (dtype, order, shape against the byte count) so that a
truncated or forged payload is an ``AggregationError`` with a reason, never garbage read.
"""

from __future__ import annotations

import ast
import functools
import io
import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from server.errors import AggregationError

MAGIC = b"\x93NUMPY"
# Header-length field size per format major version (1.0: uint16; 2.0 and 3.0: uint32).
_LEN_BYTES = {1: 2, 2: 4, 3: 4}
MAX_HEADER = 1 << 16


def npy_view(data: bytes | bytearray | memoryview) -> npt.NDArray[np.generic]:
    """The array stored in ``data`` as a view of the same memory (no copy; read-only for ``bytes``).

    A round views K x L arrays that share L headers. A header already seen whole (magic,
    version, length and dict: the first ``offset`` bytes) is recognised by one dictionary
    lookup on those bytes; only a new one is parsed and checked (``_parse``).
    """
    raw = data if isinstance(data, bytes) else memoryview(data).cast("B")
    known = _SEEN.get(bytes(raw[:_USUAL_OFFSET]))
    if known is None:
        known = _parse(raw)
    dtype, shape, order, nbytes, offset = known
    if len(raw) - offset != nbytes:
        raise AggregationError(f".npy payload has {len(raw) - offset} bytes, {dtype} {shape} needs {nbytes}")
    return np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order=order)


Layout = tuple[np.dtype[np.generic], tuple[int, ...], Literal["C", "F"], int, int]
# np.save pads its header to a multiple of 64 bytes: every array of fewer than ~10 dimensions
# has a 128-byte prefix. Headers of other lengths are parsed on every view (still cached).
_USUAL_OFFSET = 128
_SEEN: dict[bytes, Layout] = {}
_SEEN_MAX = 4096


def _parse(raw: bytes | memoryview) -> Layout:
    if len(raw) < len(MAGIC) + 4 or bytes(raw[: len(MAGIC)]) != MAGIC:
        raise AggregationError("not .npy bytes (bad magic)")
    major = raw[len(MAGIC)]
    width = _LEN_BYTES.get(major)
    if width is None:
        raise AggregationError(f"unsupported .npy format version {major}")
    start = len(MAGIC) + 2
    header_len = int.from_bytes(raw[start : start + width], "little")
    offset = start + width + header_len
    if header_len > MAX_HEADER or offset > len(raw):
        raise AggregationError(f".npy header length {header_len} is out of bounds")
    dtype, shape, order, nbytes = _layout(bytes(raw[start + width : offset]))
    layout: Layout = (dtype, shape, order, nbytes, offset)
    if offset == _USUAL_OFFSET:
        if len(_SEEN) >= _SEEN_MAX:  # headers come from the wire: keep the memory bounded
            _SEEN.clear()
        _SEEN[bytes(raw[:offset])] = layout
    return layout


@functools.lru_cache(maxsize=1024)
def _layout(text: bytes) -> tuple[np.dtype[np.generic], tuple[int, ...], Literal["C", "F"], int]:
    """dtype, shape, order and payload size of a header; cached: ``literal_eval`` is not cheap."""
    try:
        header = ast.literal_eval(text.decode("latin1"))
        dtype = np.dtype(header["descr"])
        fortran = bool(header["fortran_order"])
        shape = tuple(int(n) for n in header["shape"])
    except (ValueError, SyntaxError, TypeError, KeyError, AttributeError, MemoryError, RecursionError) as exc:
        raise AggregationError(f"malformed .npy header: {exc}") from None
    if dtype.hasobject or any(n < 0 for n in shape):
        raise AggregationError(f".npy array of {dtype} {shape} cannot be aggregated")
    return dtype, shape, "F" if fortran else "C", math.prod(shape) * dtype.itemsize


def npy_bytes(array: npt.NDArray[np.generic]) -> bytes:
    """``np.save``'s bytes with one copy of the values (``np.save`` to a ``BytesIO`` makes two)."""
    # The header must describe the order the values are written in (and 0-d arrays stay 0-d,
    # which np.ascontiguousarray would not keep).
    c_order = array if array.flags.c_contiguous else array.copy(order="C")
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(c_order))
    return b"".join((head.getvalue(), c_order.reshape(-1).data.cast("B")))
