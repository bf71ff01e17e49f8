"""A compact, immutable set of completed source ids, opened zero-copy from a snapshot.

Layout (four arrays, all little-endian, see ``docs/format.md`` §Snapshot):

* ``hashes``  — ``u32[n]``, sorted ascending: CRC-32C of each id's UTF-8 bytes;
* ``offsets`` — ``u64[n+1]``: id ``i`` is ``blob[offsets[i]:offsets[i+1]]``;
* ``runs``    — ``u32[n]``: index of the run that completed id ``i``;
* ``blob``    — the ids' UTF-8 bytes, concatenated in hash order.

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
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import accumulate

from crc32c import crc32c

__all__ = ["CompletedIndex", "build_index", "id_hash"]

_LITTLE = sys.byteorder == "little"

id_hash = crc32c
"""Hash of an id's UTF-8 bytes used to order the index (CRC-32C)."""


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

    __slots__ = ("_blob", "_hashes", "_offsets", "_runs", "ascii_ids", "count")

    def __init__(
        self,
        hashes: bytes | memoryview,
        offsets: bytes | memoryview,
        runs: bytes | memoryview,
        blob: bytes | memoryview,
        ascii_ids: bool = False,
    ) -> None:
        self._hashes = _view("I", hashes)
        self._offsets = _view("Q", offsets)
        self._runs = _view("I", runs)
        self._blob = memoryview(blob)
        self.count = len(self._hashes)
        self.ascii_ids = ascii_ids
        if len(self._offsets) != self.count + 1 or len(self._runs) != self.count:
            raise ValueError("completed-id arrays have inconsistent lengths")
        if self._offsets[0] != 0 or self._offsets[self.count] != len(self._blob):
            raise ValueError("completed-id offsets do not span the id blob")

    @classmethod
    def empty(cls) -> CompletedIndex:
        """An index with no ids."""
        return cls(b"", b"\0" * 8, b"", b"", True)

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
        h = crc32c(b)
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

    def arrays(self) -> tuple[array[int], array[int]]:
        """Copies of the hash and run arrays (for rebuilding)."""
        return _as_array("I", self._hashes), _as_array("I", self._runs)


def build_index(
    base: CompletedIndex,
    remove: Iterable[str],
    add: dict[str, int],
) -> tuple[bytes, bytes, bytes, bytes, int, bool]:
    """Build the arrays of ``base - remove + add`` (``add`` maps id -> run index).

    Returns ``(hashes, offsets, runs, blob, count, ascii_ids)``. Ids in both ``base``
    and ``add`` take the run from ``add``.
    """
    ids = base.ids()
    hashes, runs = base.arrays()
    drop = {i for i in (base.find(s) for s in [*remove, *add]) if i >= 0} if base.count else set()
    if drop:
        keep = [i for i in range(len(ids)) if i not in drop]
        ids = [ids[i] for i in keep]
        hashes = array("I", [hashes[i] for i in keep])
        runs = array("I", [runs[i] for i in keep])
    if add:
        new_ids = list(add)
        new_h = [crc32c(s.encode()) for s in new_ids]
        order = sorted(range(len(new_ids)), key=new_h.__getitem__)
        if not ids:
            ids = [new_ids[i] for i in order]
            hashes = array("I", [new_h[i] for i in order])
            runs = array("I", [add[s] for s in ids])
        else:
            out_ids: list[str] = []
            out_h = array("I")
            out_r = array("I")
            prev = 0
            for j in order:
                h = new_h[j]
                pos = bisect_right(hashes, h, prev)
                out_ids += ids[prev:pos]
                out_h += hashes[prev:pos]
                out_r += runs[prev:pos]
                s = new_ids[j]
                out_ids.append(s)
                out_h.append(h)
                out_r.append(add[s])
                prev = pos
            out_ids += ids[prev:]
            out_h += hashes[prev:]
            out_r += runs[prev:]
            ids, hashes, runs = out_ids, out_h, out_r
    text = "".join(ids)
    ascii_ids = text.isascii()
    offsets = array("Q", [0])
    if ascii_ids:
        blob = text.encode("ascii")
        offsets.extend(accumulate(map(len, ids)))
    else:
        encoded = [s.encode() for s in ids]
        blob = b"".join(encoded)
        offsets.extend(accumulate(map(len, encoded)))
    return _to_bytes(hashes), _to_bytes(offsets), _to_bytes(runs), blob, len(ids), ascii_ids
