"""Record batches decoded into columns by the compiled decoder (``_native.decode_batch``).

A :class:`~resumelog.format.Batch` decoded by msgspec holds a Python ``str`` per key
and an ``int`` per delta and source index: most of the decoding time of a journal, and
most of its memory while folded. The compaction's fold (``compactor.fold_journal``)
decodes segments with ``columns=True`` (:func:`resumelog.format.decode_segment`): where
the extension is built, each batch frame the C decoder reads (a well-formed batch with
ASCII keys, 64-bit deltas and no resets: in practice every batch) becomes a
:class:`ColumnBatch`, whose keys stay one blob of bytes (:class:`KeySpans`) and whose
deltas and source indexes are native int64 arrays. Any other frame is decoded by msgspec
as before, with its errors. The fold's fast path (:mod:`resumelog._fastfold`) keeps the
columns as they are; any other path asks for the :class:`~resumelog.format.Batch`
(:meth:`ColumnBatch.batch`), equal to msgspec's.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any, overload

from resumelog._compiled import native

if TYPE_CHECKING:
    from resumelog.format import Batch, Reset

__all__ = ["ColumnBatch", "KeySpans"]


class KeySpans:
    """Keys as one blob of ASCII bytes and each key's end in it (``ends``: native int64):
    key ``i`` is ``blob[ends[i - 1]:ends[i]]`` (``ends[-1]``: 0). Indexing a slice gives
    a ``list[str]``; only the keys asked for become Python strings."""

    __slots__ = ("blob", "ends")

    def __init__(self, blob: bytes, ends: bytes) -> None:
        self.blob = blob
        self.ends = ends

    @classmethod
    def of(cls, keys: list[str]) -> KeySpans | None:
        """``keys`` as spans, or ``None`` if one is not ASCII."""
        joined = "".join(keys)
        if not joined.isascii():
            return None
        ends = array("q", accumulate(map(len, keys)))
        return cls(joined.encode("ascii"), ends.tobytes())

    @property
    def raw(self) -> tuple[bytes, bytes]:
        """``(blob, ends)``, as the C kernels take them."""
        return self.blob, self.ends

    def __len__(self) -> int:
        return len(self.ends) // 8

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        n = len(self)
        if isinstance(i, slice):
            a, b, step = i.indices(n)
            if step != 1:
                return self.tolist()[i]
            return native.span_strs(self.blob, self.ends, a, max(a, b))  # type: ignore[no-any-return]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("key index out of range")
        return native.span_strs(self.blob, self.ends, i, i + 1)[0]  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        """Every key, as ``str``."""
        return native.span_strs(self.blob, self.ends, 0, len(self))  # type: ignore[no-any-return]


class ColumnBatch:
    """A batch as the C decoder reads it: ``sources`` (``str``), ``source_index`` and
    ``deltas`` (native int64 ``bytes``), ``keys`` (:class:`KeySpans`), ``flags``; no
    resets (a batch with resets is decoded by msgspec)."""

    __slots__ = ("deltas", "flags", "keys", "source_index", "sources")

    resets: tuple[Reset, ...] = ()

    def __init__(self, sources: list[str], source_index: bytes, blob: bytes, ends: bytes, deltas: bytes, flags: bytes):
        self.sources = sources
        self.source_index = source_index
        self.keys = KeySpans(blob, ends)
        self.deltas = deltas
        self.flags = flags

    def __len__(self) -> int:
        return len(self.flags)

    def batch(self) -> Batch:
        """The :class:`~resumelog.format.Batch` msgspec decodes from the same frame."""
        from resumelog.format import Batch

        return Batch(
            self.sources,
            _int64s(self.source_index),
            self.keys.tolist(),
            _int64s(self.deltas),
            self.flags,
            [],
        )


def _int64s(packed: bytes) -> list[int]:
    a = array("q")
    a.frombytes(packed)
    return a.tolist()


def decode_batch(frame: Any) -> ColumnBatch | None:
    """The frame as a :class:`ColumnBatch`, or ``None`` (msgspec must decode it; also
    where the extension is not built)."""
    if native is None:
        return None
    cols = native.decode_batch(frame)
    return None if cols is None else ColumnBatch(*cols)
