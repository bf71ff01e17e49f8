"""Ray's checkpoint filesystem, with a delete of ``checkpoint_path`` that a background
ingest cannot make fail.

Ray deletes a finished job's checkpoint with one ``filesystem.delete_dir(checkpoint_path)``
(``delete_checkpoint_on_success``) and only logs a warning if it fails. The background
ingest of :mod:`resumelog.ray_data._native` may still be writing resumelog's objects
under ``<checkpoint_path>/_resumelog`` then. On a local or shared file system a
recursive delete racing those writes fails (``ENOTEMPTY``: a directory emptied by the
delete got a new entry) and stops part-way, leaving some of Ray's committed id files:
the next job would skip their rows although the checkpoint was deleted.

:func:`fence_ray_delete` wraps the config's filesystem (a ``pyarrow.fs.PyFileSystem``
delegating every call, as Ray's own ``RetryingPyFileSystem`` does) so that deleting
``checkpoint_path``:

1. deletes ``_resumelog/meta.msgpack`` first: from then on every object of the
   checkpoint's epoch is foreign, the ingest's compaction refuses to publish, and no
   reader counts what it still writes (RFC 0004);
2. deletes the directory, retrying a few times while the fenced ingest still writes;
3. if that keeps failing, deletes Ray's own entries (everything but ``_resumelog``)
   one by one and leaves the fenced debris under ``_resumelog`` (ignored by every
   reader, removed by ``gc``). Only Ray's files still present make it raise.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any

import pyarrow.fs as pafs
from ray.data.datasource.path_util import _unwrap_protocol

from resumelog import paths

logger = logging.getLogger("resumelog")

RESUMELOG_DIR = "_resumelog"
"""resumelog's part of Ray's ``checkpoint_path``."""

_ATTEMPTS = 4
_BACKOFF_S = 0.05


def fence_ray_delete(config: Any) -> None:
    """Make Ray's delete of ``config.checkpoint_path`` fence resumelog first (see the
    module docstring). Idempotent; every other filesystem call is unchanged."""
    fs = config.filesystem
    if isinstance(fs, pafs.PyFileSystem) and isinstance(fs.handler, FencedDeleteHandler):
        return
    root = _unwrap_protocol(config.checkpoint_path)  # type: ignore[no-untyped-call]
    config.filesystem = pafs.PyFileSystem(FencedDeleteHandler(fs, root))


def delete_checkpoint_dir(fs: pafs.FileSystem, root: str) -> None:
    """Delete Ray's ``checkpoint_path`` ``root`` on ``fs``, resumelog's epoch first."""
    try:
        fs.delete_file(posixpath.join(root, RESUMELOG_DIR, paths.META))
    except FileNotFoundError:
        pass
    for attempt in range(_ATTEMPTS):
        try:
            fs.delete_dir(root)
            return
        except OSError:  # ENOTEMPTY, or ENOENT for an entry a fenced ingest removed
            if fs.get_file_info(root).type == pafs.FileType.NotFound:
                return
            time.sleep(_BACKOFF_S * 2**attempt)
    left: list[str] = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if posixpath.basename(info.path) == RESUMELOG_DIR:
            continue
        try:
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(info.path)
    if left:
        raise OSError(f"could not delete {len(left)} of Ray's checkpoint entries under {root}: {left[:3]}")
    logger.info(
        "resumelog: deleted Ray's checkpoint files under %s; objects a background ingest wrote after "
        "the delete began stay under %s (another epoch: no reader counts them, gc deletes them)",
        root,
        RESUMELOG_DIR,
    )


class FencedDeleteHandler(pafs.FileSystemHandler):  # type: ignore[misc]
    """Delegates to ``fs``, except ``delete_dir(root)``: :func:`delete_checkpoint_dir`."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.fs, self.root))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FencedDeleteHandler):
            return bool(self.fs.equals(other.fs)) and self.root == other.root
        return NotImplemented

    def get_type_name(self) -> str:
        return f"resumelog-fenced+{self.fs.type_name}"

    def normalize_path(self, path: str) -> str:
        return str(self.fs.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        if path.rstrip("/") == self.root:
            delete_checkpoint_dir(self.fs, self.root)
        else:
            self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_append_stream(path, metadata=metadata)
