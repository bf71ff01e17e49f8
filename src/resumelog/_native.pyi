"""Types of the optional extension ``resumelog._native`` (``_native.c``)."""

from typing import TypeVar

_T = TypeVar("_T")

SOURCE: str
"""The CRC-32 (hex) of the ``_native.c`` it was compiled from."""

def crc32c(data: bytes | bytearray | memoryview, /) -> int: ...
def hash_order(ids: list[bytes], /) -> tuple[list[int], bytes, bytes, bytes] | None: ...
def shape_keys(
    keys: list[str] | tuple[bytes, bytes],
    deltas: list[int] | bytes | memoryview,
    starts: list[int],
    cand: list[int],
    sources: list[str],
    sep: str | None,
    cut: str | None,
    /,
) -> tuple[list[object], bytes, list[object], bytes]: ...
def number_states(
    index: dict[tuple[str, str], int],
    pending: dict[tuple[str, str], object],
    run: str,
    sources: list[str],
    source_index: list[int] | bytes,
    start: int,
    /,
) -> tuple[bytes, list[tuple[str, str]]] | None: ...
def take(items: list[_T], order: bytes | memoryview, /) -> list[_T]: ...
def int64s(values: list[int], /) -> bytes | None: ...
def in_range(values: list[int], n: int, /) -> bool: ...
def pack_uints(values: list[int], widths: tuple[int, ...], /) -> bytes: ...
def key_order(
    blob: bytes | memoryview, offsets: bytes | memoryview, width: int, /
) -> tuple[list[bytes], list[int]]: ...
def sorted_entries(
    added: dict[str, str],
    tags: dict[str, int] | tuple[dict[str, int], list[list[str]], list[list[int]]],
    runs: dict[str, int],
    /,
) -> tuple[list[bytes], list[int], list[int], bytes] | bool | None: ...
def decode_batch(frame: bytes | memoryview, /) -> tuple[list[str], bytes, bytes, bytes, bytes, bytes] | None: ...
def span_strs(blob: bytes, ends: bytes | memoryview, a: int, b: int, /) -> list[str]: ...
def take_spans(parts: list[tuple[bytes, bytes]], order: bytes | memoryview, /) -> tuple[bytes, bytes]: ...
