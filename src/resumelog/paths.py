"""The only place that formats and parses object names (``docs/format.md`` §Layout).

Layout under a checkpoint root::

    meta.msgpack
    journal/<writer_id>/<incarnation>/<seq:020d>.seg
    snapshots/<n:020d>.snap

Fixed-width numbers make lexicographic listing order equal numeric order.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from resumelog.errors import InvalidId

__all__ = [
    "JOURNAL_PREFIX",
    "LAYER_PREFIX",
    "META",
    "QUARANTINE_PREFIX",
    "SNAPSHOT_PREFIX",
    "SegmentName",
    "default_writer_id",
    "layer_name",
    "new_ulid",
    "parse_layer",
    "parse_segment",
    "parse_snapshot",
    "segment_name",
    "snapshot_name",
    "validate_id",
]

META = "meta.msgpack"
JOURNAL_PREFIX = "journal/"
SNAPSHOT_PREFIX = "snapshots/"
LAYER_PREFIX = "layers/"
"""Layers of the completed-id index (format version 5 on), named by the snapshots."""
QUARANTINE_PREFIX = "quarantine/"
"""Corrupt objects moved aside by ``resumelog repair`` (never read by the loader)."""

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SEG_RE = re.compile(r"journal/([A-Za-z0-9._-]{1,128})/([0-9A-Z]{26})/(\d{20})\.seg")
_SNAP_RE = re.compile(r"snapshots/(\d{20})\.snap")
_LAYER_RE = re.compile(r"layers/(\d{20})-([0-9a-f]{16})\.layer")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def validate_id(value: object, what: str = "writer id") -> str:
    """Return ``value`` if it is a valid writer or run id, else raise :class:`InvalidId`.

    Valid ids match ``[A-Za-z0-9._-]{1,128}`` and are not ``.`` or ``..``.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value in (".", ".."):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40] + "...")
        raise InvalidId(f"invalid {what} {shown}: must match [A-Za-z0-9._-]{{1,128}} and not be '.' or '..'")
    return value


def default_writer_id() -> str:
    """``<host>-<pid>`` with characters outside the id alphabet replaced by ``_``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:100] or "host"
    return f"{host}-{os.getpid()}"


def new_ulid(clock: Callable[[], float] = time.time, rand: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A 26-character ULID (48-bit millisecond time + 80 random bits, Crockford base32).

    Sorts by creation time; ``clock`` and ``rand`` are injectable for tests.
    """
    value = (int(clock() * 1000) & ((1 << 48) - 1)) << 80 | int.from_bytes(rand(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class SegmentName(NamedTuple):
    """The parts of a journal segment's object name."""

    writer_id: str
    incarnation: str
    seq: int


def segment_name(writer_id: str, incarnation: str, seq: int) -> str:
    """Object name of segment ``seq`` of the stream ``(writer_id, incarnation)``."""
    return f"{JOURNAL_PREFIX}{writer_id}/{incarnation}/{seq:020d}.seg"


def parse_segment(name: str) -> SegmentName | None:
    """Parse a segment object name (relative to the root); ``None`` if it is not one."""
    m = _SEG_RE.fullmatch(name)
    if m is None or m.group(1) in (".", ".."):
        return None
    return SegmentName(m.group(1), m.group(2), int(m.group(3)))


def snapshot_name(n: int) -> str:
    """Object name of snapshot number ``n``."""
    return f"{SNAPSHOT_PREFIX}{n:020d}.snap"


def parse_snapshot(name: str) -> int | None:
    """Snapshot number from an object name; ``None`` if it is not a snapshot name."""
    m = _SNAP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def parse_layer(name: str) -> int | None:
    """The number of the snapshot a layer was written for, from its object name;
    ``None`` if it is not a layer name (``layers/<number>-<token>.layer``)."""
    m = _LAYER_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def layer_name(number: int, token: str) -> str:
    """Object name of a layer written for snapshot ``number`` (``token``: 16 hex digits
    of its nonce, so that concurrent compactors never collide)."""
    return f"{LAYER_PREFIX}{number:020d}-{token}.layer"
