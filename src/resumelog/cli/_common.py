"""Shared helpers of the CLI: exit codes, error classification, option parsing, secret scrubbing, printing."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NoReturn, TextIO

__all__ = [
    "DEFAULT_STALE_AFTER",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "CliError",
    "Scrubber",
    "classify_error",
    "dump_json",
    "error_kind",
    "human_age",
    "human_bytes",
    "parse_duration",
    "parse_storage_options",
    "plural",
    "read_sources",
    "redact_url",
    "writer_state",
]

EXIT_OK = 0
"""The command did what was asked (``pending`` also when sources are left, unless ``--exit-code``)."""
EXIT_PROBLEMS = 1
"""Problems found: ``verify`` found corruption, a command met a corrupt object,
``pending --exit-code`` found sources left."""
EXIT_USAGE = 2
"""Usage or bad input: bad flags, no checkpoint at the URL, bad storage options,
unknown object, refused confirmation, a newer format."""
EXIT_FAILED = 3
"""The operation failed: storage unreachable, permission denied, an unexpected error.
Usually worth a retry; ``--debug`` shows the traceback."""

#: option keys whose values are never secret and are kept in messages
_PUBLIC_KEYS = frozenset(
    {"endpoint_url", "region_name", "region", "profile", "project", "anon", "use_ssl", "fsync", "requester_pays"}
)


class CliError(Exception):
    """An error the CLI reports as one line with an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Raise a :class:`CliError`."""
    raise CliError(message, code)


def classify_error(exc: BaseException) -> tuple[int, str]:
    """Exit code and one-line message for an exception raised by a command."""
    from resumelog import errors

    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, errors.CorruptObject):
        return EXIT_PROBLEMS, f"corrupt object: {exc} (run 'resumelog verify URL' for a full report)"
    if isinstance(exc, errors.UnsupportedFormat):
        return EXIT_USAGE, f"{exc}"
    if isinstance(exc, errors.StorageError):
        return EXIT_FAILED, f"storage error: {exc.strerror or exc}"
    if isinstance(exc, (errors.InvalidId, errors.UnsupportedBackend, errors.FingerprintMismatch)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, errors.ObjectNotFound):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, ImportError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, (PermissionError, ConnectionError, TimeoutError, OSError)):
        return EXIT_FAILED, f"storage error: {type(exc).__name__}: {exc}"
    if isinstance(exc, errors.ResumelogError):
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


# --------------------------------------------------------------------------- options


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_storage_options(items: Iterable[str] | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` items (values parsed as JSON when they parse) into a dict.

    ``a.b=1`` sets ``{"a": {"b": 1}}``. ``$RESUMELOG_STORAGE_OPTIONS`` (a JSON object)
    is the base that the items update. Messages never repeat a value.
    """
    env = os.environ if env is None else env
    opts: dict[str, Any] = {}
    base = env.get("RESUMELOG_STORAGE_OPTIONS")
    if base:
        try:
            parsed = json.loads(base)
        except ValueError:
            fail("$RESUMELOG_STORAGE_OPTIONS is not valid JSON")
        if not isinstance(parsed, dict):
            fail("$RESUMELOG_STORAGE_OPTIONS must be a JSON object")
        opts.update(parsed)
    for n, item in enumerate(items or (), 1):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            fail(f"--storage-option #{n}: expected KEY=VALUE")
        parts = key.split(".")
        if any(not p for p in parts):
            fail(f"--storage-option #{n}: empty part in key {key!r}")
        target = opts
        for p in parts[:-1]:
            nxt = target.get(p)
            if not isinstance(nxt, dict):
                nxt = target[p] = {}
            target = nxt
        target[parts[-1]] = _parse_value(raw)
    return opts


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h|hr|d|w)?\s*", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1h30m"`` into seconds."""
    pos = 0
    total = 0.0
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"invalid duration {text!r} (examples: 30s, 15m, 1h, 2d)")
        unit = (m.group(2) or "s").lower()
        total += float(m.group(1)) * _UNITS[unit]
        pos = m.end()
    return total


def duration_arg(text: str) -> float:
    """argparse ``type=`` for durations."""
    import argparse

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_sources(spec: str | None, extra: Iterable[str] = (), stdin: TextIO | None = None) -> list[str]:
    """Source ids from ``FILE`` or ``-`` (stdin) plus ``extra``.

    The text is one id per line (blank lines and surrounding whitespace ignored), or a
    JSON array of strings when it starts with ``[`` and parses as one.
    """
    out = list(extra)
    if spec is None:
        return out
    if spec == "-":
        text = (stdin or sys.stdin).read()
    else:
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            fail(f"sources file {spec!r} does not exist")
        except OSError as exc:
            fail(f"cannot read sources file {spec!r}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            fail(f"sources file {spec!r} is not UTF-8 text")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, list):
            if not all(isinstance(s, str) for s in data):
                fail("a JSON sources list must hold strings only")
            return out + data
    return out + [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- secrets


def redact_url(url: str) -> str:
    """``proto://user:secret@host/x`` -> ``proto://***@host/x`` (other URLs unchanged)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", url)


class Scrubber:
    """Replaces every secret-looking value of the storage options in a text by ``***``."""

    def __init__(self, options: Mapping[str, Any] | None = None, url: str | None = None) -> None:
        self.secrets: list[str] = []
        if options:
            self._collect(options)
        if url:
            m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@]*)@", url)
            if m and m.group(1):
                self.secrets.append(m.group(1))
                self.secrets.extend(p for p in m.group(1).split(":") if len(p) >= 4)
        self.secrets.sort(key=len, reverse=True)

    def _collect(self, value: Any, key: str = "") -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                self._collect(v, str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._collect(v, key)
        elif isinstance(value, str) and len(value) >= 4 and key not in _PUBLIC_KEYS:
            self.secrets.append(value)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


# --------------------------------------------------------------------------- output


def dump_json(obj: Any, out: TextIO | None = None) -> None:
    """Print one JSON document (sorted as given, ASCII-safe) and a newline."""
    out = out or sys.stdout
    out.write(json.dumps(obj, ensure_ascii=False, default=_default))
    out.write("\n")


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    """``75`` -> ``"1m15s"``; ``None`` -> ``"-"``."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``plural(1, "error")`` -> ``"1 error"``; ``plural(2, "error")`` -> ``"2 errors"``."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {plural_form or noun + 's'}"


DEFAULT_STALE_AFTER = 300.0
"""Seconds without a flush after which an open writer is shown as ``stale`` (default 5 min)."""


def writer_state(closed: bool, age_s: float | None, stale_after: float = DEFAULT_STALE_AFTER) -> str:
    """The one vocabulary ``status`` and ``watch`` use for a journal stream (writer incarnation).

    ``closed``: the writer closed its stream (it will write nothing more). ``active``: not
    closed and its last flush is at most ``stale_after`` seconds old. ``stale``: not closed
    and silent for longer: the process was killed (SIGKILL, OOM, a lost node), hangs, or
    has had nothing to flush; a stale stream that never resumes is harmless (its run's
    unfinished sources rerun in the next run).
    """
    if closed:
        return "closed"
    if age_s is not None and age_s > stale_after:
        return "stale"
    return "active"


def error_kind(code: int) -> str:
    """The ``kind`` of a ``--json`` error document for an exit code."""
    return {EXIT_PROBLEMS: "problems", EXIT_USAGE: "usage", EXIT_FAILED: "failed", 130: "interrupted"}.get(
        code, "failed"
    )


def table(rows: list[list[str]], header: list[str], indent: str = "  ") -> Iterator[str]:
    """Plain-text aligned table lines."""
    widths = [len(h) for h in header]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    yield indent + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    for r in rows:
        yield indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
