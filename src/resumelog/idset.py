"""A compact, immutable set of completed source ids, opened zero-copy from a snapshot.

Layout (four arrays, all little-endian, see ``docs/format.md`` §Snapshot):

* ``hashes``  — ``u64[n]``, sorted ascending: :func:`hash64` of each id's UTF-8 bytes;
* ``offsets`` — ``u64[n+1]``: id ``i`` is ``blob[offsets[i]:offsets[i+1]]``;
* ``runs``    — ``u32[n]``: index of the run that completed id ``i``;
* ``blob``    — the ids' UTF-8 bytes, concatenated in hash order.

A lookup hashes the id, bisects the hash array (C speed on a ``memoryview``) and
verifies the stored bytes, so opening 10M ids costs one read and no per-id decoding.
We wrote this instead of using a library because the core depends only on ``msgspec``,
``fsspec`` and ``crc32c`` (no numpy), and a sorted-hash array with verification is
~150 lines.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from itertools import accumulate

from crc32c import crc32c

__all__ = ["CompletedIndex", "hash64"]

_LITTLE = sys.byteorder == "little"


def hash64(data: bytes) -> int:
    """Stable 64-bit hash: CRC-32 in the high half, CRC-32C in the low half.

    Not cryptographic and not needed to be: every hit is verified against the stored
    bytes; the hash only orders the index and makes misses cheap.
    """
    return (zlib.crc32(data) << 32) | crc32c(data)


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


class CompletedIndex:
    """Read-only sorted-hash index of completed ids with the run that completed each."""

    __slots__ = ("_blob", "_hashes", "_offsets", "_runs", "ascii_nul_free", "count")

    def __init__(
        self,
        hashes: bytes | memoryview,
        offsets: bytes | memoryview,
        runs: bytes | memoryview,
        blob: bytes | memoryview,
        ascii_nul_free: bool = False,
    ) -> None:
        self._hashes = _view("Q", hashes)
        self._offsets = _view("Q", offsets)
        self._runs = _view("I", runs)
        self._blob = memoryview(blob)
        self.count = len(self._hashes)
        self.ascii_nul_free = ascii_nul_free
        if len(self._offsets) != self.count + 1 or len(self._runs) != self.count:
            raise ValueError("completed-id arrays have inconsistent lengths")
        if self.count and (self._offsets[0] != 0 or self._offsets[self.count] != len(self._blob)):
            raise ValueError("completed-id offsets do not span the id blob")

    @classmethod
    def empty(cls) -> CompletedIndex:
        """An index with no ids."""
        return cls(b"", b"\0" * 8, b"", b"")

    def __len__(self) -> int:
        return self.count

    def find(self, source: str) -> int:
        """Position of ``source`` in the index, or ``-1``."""
        if not self.count:
            return -1
        try:
            b = source.encode()
        except UnicodeEncodeError:
            return -1
        h = hash64(b)
        hashes = self._hashes
        i = bisect_left(hashes, h)
        n = self.count
        off = self._offsets
        blob = self._blob
        while i < n and hashes[i] == h:
            if blob[off[i] : off[i + 1]] == b:
                return i
            i += 1
        return -1

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self.find(source) >= 0

    def run_at(self, i: int) -> int:
        """Index (into the snapshot's run table) of the run that completed entry ``i``."""
        return int(self._runs[i])

    def ids(self) -> list[str]:
        """All ids, in index order (decodes every id; use for iteration and rebuilds)."""
        n = self.count
        if not n:
            return []
        blob = bytes(self._blob)
        if self.ascii_nul_free:
            text = blob.decode("ascii")
            off = self._offsets
            return [text[off[i] : off[i + 1]] for i in range(n)]
        off = self._offsets
        return [blob[off[i] : off[i + 1]].decode() for i in range(n)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def arrays(self) -> tuple[array[int], array[int]]:
        """Copies of the hash and run arrays (for rebuilding)."""
        return _as_array("Q", self._hashes), _as_array("I", self._runs)


def build_index(
    base: CompletedIndex,
    remove: Iterable[str],
    add: dict[str, int],
) -> tuple[bytes, bytes, bytes, bytes, int, bool]:
    """Build the arrays of ``base - remove + add`` (``add`` maps id -> run index).

    Returns ``(hashes, offsets, runs, blob, count, ascii_nul_free)``. Ids in both
    ``base`` and ``add`` take the run from ``add``.
    """
    ids = base.ids()
    hashes, runs = base.arrays()
    drop = set()
    for s in remove:
        i = base.find(s)
        if i >= 0:
            drop.add(i)
    for s in add:
        i = base.find(s)
        if i >= 0:
            drop.add(i)
    if drop:
        keep = [i for i in range(len(ids)) if i not in drop] if len(drop) > len(ids) // 8 else None
        if keep is not None:
            ids = [ids[i] for i in keep]
            hashes = array("Q", (hashes[i] for i in keep))
            runs = array("I", (runs[i] for i in keep))
        else:
            for i in sorted(drop, reverse=True):
                del ids[i]
                del hashes[i]
                del runs[i]
    if add:
        new = sorted((hash64(s.encode()), s, r) for s, r in add.items())
        out_ids: list[str] = []
        out_h = array("Q")
        out_r = array("I")
        prev = 0
        for h, s, r in new:
            pos = bisect_right(hashes, h, prev)
            out_ids.extend(ids[prev:pos])
            out_h.extend(hashes[prev:pos])
            out_r.extend(runs[prev:pos])
            out_ids.append(s)
            out_h.append(h)
            out_r.append(r)
            prev = pos
        out_ids.extend(ids[prev:])
        out_h.extend(hashes[prev:])
        out_r.extend(runs[prev:])
        ids, hashes, runs = out_ids, out_h, out_r
    text = "".join(ids)
    ascii_ok = text.isascii() and "\0" not in text
    offsets = array("Q", [0])
    if ascii_ok:
        blob = text.encode("ascii")
        offsets.extend(accumulate(map(len, ids)))
    else:
        encoded = [s.encode() for s in ids]
        blob = b"".join(encoded)
        offsets.extend(accumulate(map(len, encoded)))
    return _to_bytes(hashes), _to_bytes(offsets), _to_bytes(runs), blob, len(ids), ascii_ok
