"""Object stores through fsspec (S3 via s3fs, GCS via gcsfs) with create-only writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from resumelog.errors import UnsupportedBackend
from resumelog.storage._base import ObjectInfo, Store

__all__ = ["FsspecStore"]


class FsspecStore(Store):
    """Placeholder until the object-store backend lands: refuses every URL."""

    def __init__(self, url: str, storage_options: Mapping[str, Any], *, single_writer: bool = False) -> None:
        raise UnsupportedBackend(f"no atomic create-only backend for {url.split('://')[0]}:// yet")

    @property
    def url(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def put_if_absent(self, key: str, data: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def read(self, key: str) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[ObjectInfo]:  # pragma: no cover
        raise NotImplementedError

    def delete(self, keys: Iterable[str]) -> None:  # pragma: no cover
        raise NotImplementedError
