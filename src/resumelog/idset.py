"""A compact, immutable set of completed source ids, opened zero-copy from a snapshot.

Layout (four arrays, all little-endian, see ``docs/format.md`` §Snapshot):

* ``hashes``  — ``u32[n]``, sorted ascending: CRC-32C of each id's UTF-8 bytes;
* ``offsets`` — ``u32[n+1]`` (``u64`` once the blob reaches 4 GiB): id ``i`` is
  ``blob[offsets[i]:offsets[i+1]]``;
* ``runs``    — ``u8|u16|u32[n]`` (the narrowest that holds the largest): index of the
  run that completed id ``i``;
* ``blob``    — the ids' UTF-8 bytes, concatenated in hash order.

Element widths are not stored: a reader divides a frame's length by its element count.

A lookup hashes the id, bisects the hash array (C speed on a ``memoryview``) and
verifies the stored bytes, so opening 10M ids costs one read and no per-id decoding.
Equal hashes are fine (every candidate is verified); they only cost a comparison.
We wrote this instead of using a library because the core depends only on ``msgspec``,
``fsspec`` and ``crc32c`` (no numpy), and a sorted-hash array with verification is
~150 lines.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from resumelog import _fastfold
from resumelog._compiled import native
from resumelog._crc import crc32c

__all__ = ["CompletedIndex", "counted_uints", "encoded_key", "id_hash", "pack_uints"]

_LITTLE = sys.byteorder == "little"

id_hash = crc32c
"""Hash of an id's UTF-8 bytes used to order the index (CRC-32C)."""


def encoded_key(source: str) -> tuple[bytes, int] | None:
    """``(UTF-8 bytes, hash)`` of an id, as the indexes look it up; ``None`` if it has
    no UTF-8 encoding (a lone surrogate: never stored, so never found)."""
    try:
        b = source.encode()
    except UnicodeEncodeError:
        return None
    return b, crc32c(b)


def _as_array(typecode: str, data: bytes | memoryview | array[int]) -> array[int]:
    a = array(typecode)
    a.frombytes(memoryview(data).cast("B"))
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        a.byteswap()
    return a


def _to_bytes(a: array[int]) -> bytes:
    if not _LITTLE:  # pragma: no cover
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _view(typecode: str, data: bytes | memoryview) -> memoryview | array[int]:
    if _LITTLE:
        view: memoryview = memoryview(data).cast("B").cast(typecode)  # type: ignore[call-overload]
        return view
    return _as_array(typecode, data)  # pragma: no cover


_TYPECODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
UINT_WIDTHS = (1, 2, 4)


def counted_uints(
    data: bytes | memoryview, count: int, widths: tuple[int, ...] = UINT_WIDTHS
) -> memoryview | array[int]:
    """Zero-copy view of ``count`` little-endian unsigned ints held in ``data``, their
    width (one of ``widths``) deduced from its length; :class:`ValueError` if the
    length fits none. The one reader of the variable-width arrays of format v2."""
    if count == 0:
        width: int | None = widths[0] if len(data) == 0 else None
    else:
        w, rest = divmod(len(data), count)
        width = w if not rest and w in widths else None
    if width is None:
        raise ValueError(f"{len(data)} bytes do not hold {count} ints of {' or '.join(map(str, widths))} bytes")
    return _view(_TYPECODES[width], data)


def pack_uints(values: Iterable[int], widths: tuple[int, ...] = UINT_WIDTHS) -> bytes:
    """``values`` as little-endian unsigned ints of the narrowest of ``widths`` that
    holds the largest (all values must be ``>= 0``)."""
    if native is not None and type(values) is list:
        packed: bytes = native.pack_uints(values, widths)  # (one C pass)
        return packed
    a = values if isinstance(values, array) else array("Q", values)
    top = max(a, default=0)
    width = next((w for w in widths if top < 1 << (8 * w)), None)
    if width is None:
        raise OverflowError(f"{top} does not fit in {max(widths)} bytes")
    if a.itemsize != width:
        a = array(_TYPECODES[width], a)
    return _to_bytes(a)


def index_views(
    hashes: bytes | memoryview, offsets: bytes | memoryview, runs: bytes | memoryview
) -> tuple[memoryview | array[int], memoryview | array[int], memoryview | array[int]]:
    """Zero-copy views of an index's hash, offset and run arrays (widths deduced from
    the lengths); :class:`ValueError` if the lengths fit no width."""
    n, rest = divmod(len(hashes), 4)
    try:
        if rest:
            raise ValueError("hash array length is not a multiple of 4")
        return _view("I", hashes), counted_uints(offsets, n + 1, (4, 8)), counted_uints(runs, n)
    except ValueError as exc:
        raise ValueError(f"completed-id arrays have inconsistent lengths ({exc})") from None


_DIR_BITS = 16
_DIR_SHIFT = 32 - _DIR_BITS
_DIR_AFTER = 4096
_DIR_MIN = 1 << 16
"""A large index that serves many lookups (a fold checking each new source against the
base snapshot) builds a directory: where each value of the top 16 hash bits starts,
65,537 bisects once (40 ms measured at 4M ids), after which a lookup bisects ~count/65536
neighbouring entries instead of the whole array (a few cache lines instead of ~23
scattered reads). Opening and a few lookups never pay for it."""


_BULK_MIN = 16
"""Fewer lookups at once go one at a time (NumPy's fixed cost per call)."""


class CompletedIndex:
    """Read-only sorted-hash index of completed ids with the run that completed each."""

    __slots__ = ("_blob", "_dir", "_hashes", "_lookups", "_offsets", "_runs", "ascii_ids", "count")

    def __init__(
        self,
        hashes: bytes | memoryview,
        offsets: bytes | memoryview,
        runs: bytes | memoryview,
        blob: bytes | memoryview,
        ascii_ids: bool = False,
    ) -> None:
        self._hashes, self._offsets, self._runs = index_views(hashes, offsets, runs)
        self.count = len(self._hashes)
        self._blob = memoryview(blob)
        self.ascii_ids = ascii_ids
        self._dir: array[int] | None = None
        self._lookups = 0
        if self._offsets[0] != 0 or self._offsets[self.count] != len(self._blob):
            raise ValueError("completed-id offsets do not span the id blob")

    @classmethod
    def empty(cls) -> CompletedIndex:
        """An index with no ids."""
        return cls(b"", b"\0" * 4, b"", b"", True)

    def __len__(self) -> int:
        return self.count

    def find(self, source: str) -> int:
        """Position of ``source`` in the index, or ``-1``."""
        key = encoded_key(source) if self.count else None
        return -1 if key is None else self.find_encoded(*key)

    def find_encoded(self, b: bytes, h: int) -> int:
        """:meth:`find` of the id whose UTF-8 bytes are ``b`` and hash ``h`` (a caller
        looking one id up in several indexes computes both once)."""
        if not self.count:
            return -1
        hashes = self._hashes
        d = self._dir
        if d is not None:
            top = h >> _DIR_SHIFT
            i = bisect_left(hashes, h, d[top], d[top + 1])
        else:
            i = bisect_left(hashes, h)
            self._lookups += 1
            if self._lookups == _DIR_AFTER and self.count >= _DIR_MIN:
                self._dir = array("Q", [bisect_left(hashes, t << _DIR_SHIFT) for t in range((1 << _DIR_BITS) + 1)])
        n = self.count
        off = self._offsets
        blob = self._blob
        while i < n and hashes[i] == h:
            if blob[off[i] : off[i + 1]] == b:
                return i
            i += 1
        return -1

    def find_many_encoded(self, bs: Sequence[bytes], hs: Sequence[int]) -> list[int]:
        """:meth:`find_encoded` of each ``(bs[j], hs[j])``: with NumPy (the fold's fast
        path, :mod:`resumelog._fastfold`), one vectorised search of the hashes, then
        the ids compared where a hash matches; else one lookup at a time."""
        np = _fastfold.np if _fastfold.ENABLED else None
        n = self.count
        if np is None or len(hs) < _BULK_MIN or not n:
            return list(map(self.find_encoded, bs, hs))
        hashes = self._hashes
        h = np.frombuffer(hashes, dtype=np.uint32)
        q = np.fromiter(hs, dtype=np.uint32, count=len(hs))
        at = np.searchsorted(h, q)
        match = np.flatnonzero(h[np.minimum(at, n - 1)] == q)
        out = [-1] * len(hs)
        off = self._offsets
        blob = self._blob
        for j, i in zip(match.tolist(), at[match].tolist()):
            b, hj = bs[j], hs[j]
            while i < n and hashes[i] == hj:
                if blob[off[i] : off[i + 1]] == b:
                    out[j] = i
                    break
                i += 1
        return out

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self.find(source) >= 0

    def run_at(self, i: int) -> int:
        """Index (into the snapshot's run table) of the run that completed entry ``i``."""
        return int(self._runs[i])

    def run_counts(self) -> dict[int, int]:
        """How many ids each run index completed (counted at C speed)."""
        return dict(Counter(self._runs))

    def ids(self) -> list[str]:
        """All ids, in index order (decodes every id; for iteration and rebuilds)."""
        n = self.count
        if not n:
            return []
        off = self._offsets
        if self.ascii_ids:
            text = bytes(self._blob).decode("ascii")
            return [text[off[i] : off[i + 1]] for i in range(n)]
        blob = self._blob
        return [bytes(blob[off[i] : off[i + 1]]).decode() for i in range(n)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def max_encoded(self) -> bytes | None:
        """The UTF-8 bytes of the largest id (bytewise, as layers order their blocks), or
        ``None`` if empty."""
        n = self.count
        if not n:
            return None
        off = self._offsets
        blob = bytes(self._blob)
        return max(blob[off[i] : off[i + 1]] for i in range(n))

    def raw(self) -> tuple[memoryview, memoryview, memoryview, memoryview]:
        """The hash, offset and run arrays and the blob as stored (bytes views)."""
        return (*(memoryview(a).cast("B") for a in (self._hashes, self._offsets, self._runs)), self._blob)  # type: ignore[return-value]

    def arrays(self) -> tuple[array[int], array[int]]:
        """Copies of the hash and run arrays (runs widened to ``u32``; for rebuilding)."""
        return _as_array("I", self._hashes), array("I", self._runs)
