"""npy_view reads .npy bytes in place and refuses what is not a well-formed numeric array."""

from __future__ import annotations

import io

import numpy as np
import pytest

from server.aggregation.npy import npy_bytes, npy_view
from server.errors import AggregationError


def saved(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.linspace(-1, 1, 7, dtype=np.float64),
        np.arange(5, dtype=np.int64),
        np.array(3.5, dtype=np.float32),
        np.zeros((0, 3), dtype=np.float32),
        np.asfortranarray(np.arange(6, dtype=np.float16).reshape(2, 3)),
        np.arange(4, dtype=">f4"),
    ],
)
def test_view_equals_np_load(array: np.ndarray) -> None:
    data = saved(array)
    view = npy_view(data)
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    assert view.dtype == loaded.dtype
    assert view.shape == loaded.shape
    np.testing.assert_array_equal(view, loaded)
    assert not view.flags.writeable


def test_view_reads_the_bytes_in_place() -> None:
    data = bytearray(saved(np.zeros(4, dtype=np.float32)))
    view = npy_view(data)
    data[-4:] = np.float32(7.0).tobytes()
    assert view[-1] == 7.0  # the change shows through: no copy was made


def test_format_version_2_is_read() -> None:
    array = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(npy_view(saved(array, version=(2, 0))), array)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda b: b"\x00" + b[1:], "bad magic"),
        (lambda b: b[:6] + b"\x09" + b[7:], "format version"),
        (lambda b: b[:-4], "needs"),
        (lambda b: b + b"\x00" * 4, "needs"),
        (lambda b: b[:8] + (60000).to_bytes(2, "little") + b[10:], "out of bounds"),
        (lambda b: b[:10] + b"{'descr': '<f4', 'fortran_order': False}".ljust(len(b) - 10 - 16) + b[-16:], "header"),
        (lambda b: b[:5], "bad magic"),
    ],
)
def test_malformed_bytes_are_refused_with_a_reason(mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    data = saved(np.arange(4, dtype=np.float32))
    with pytest.raises(AggregationError, match=fragment):
        npy_view(mutate(data))


def test_object_arrays_are_refused() -> None:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + b"\x00" * 8
    with pytest.raises(AggregationError, match="cannot be aggregated"):
        npy_view(data)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(2.5, dtype=np.float64),
        np.zeros((0, 2), dtype=np.float32),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    ],
)
def test_npy_bytes_are_what_np_save_writes(array: np.ndarray) -> None:
    data = npy_bytes(array)
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.shape == array.shape
    np.testing.assert_array_equal(npy_view(data), array)


def test_a_header_seen_before_still_has_its_payload_size_checked() -> None:
    good = saved(np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(npy_view(good), np.arange(12, dtype=np.float32).reshape(3, 4))
    with pytest.raises(AggregationError, match="payload has 44 bytes"):
        npy_view(good[:-4])  # the same 128-byte header, recognised without parsing
    with pytest.raises(AggregationError, match="payload has 52 bytes"):
        npy_view(good + b"\x00" * 4)


def test_the_seen_headers_stay_bounded_and_views_stay_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.aggregation import npy

    monkeypatch.setattr(npy, "_SEEN", {})
    monkeypatch.setattr(npy, "_SEEN_MAX", 2)
    arrays = [np.arange(n, dtype=np.float32) for n in (3, 4, 5, 6, 7)]
    for _ in range(2):
        for array in arrays:
            np.testing.assert_array_equal(npy_view(saved(array)), array)
            assert len(npy._SEEN) <= 2
