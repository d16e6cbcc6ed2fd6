"""Unsent batches on disk, so short-lived tools lose nothing when the server is unreachable.

One file per batch, `<batch_id>.pb`, holding the serialized ReportRequest. Resending a
spooled batch is safe because the server de-duplicates by batch_id, so several
processes sharing a spool directory may race on a file without harm. Files contain user
ids, so the directory is created 0700 and the files 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from google.protobuf.message import DecodeError

from chorus.v1 import ingest_pb2

__all__ = ["MAX_SPOOL_BYTES", "Spool"]

logger = logging.getLogger("chorus.client")

SUFFIX = ".pb"
CORRUPT_SUFFIX = ".corrupt"
TMP_SUFFIX = ".tmp"
#: Upper bound on the directory's total size, counting corrupt and temporary files.
MAX_SPOOL_BYTES = 32 * 1024 * 1024
#: Temporary files older than this were left by a writer that died mid-write.
_STALE_TMP_SECONDS = 3600.0


class Spool:
    """A bounded directory of serialized ReportRequests, written atomically."""

    def __init__(self, directory: Path, max_bytes: int = MAX_SPOOL_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def write(self, request: ingest_pb2.ReportRequest) -> Path | None:
        """Persist one batch; return its path, or None if it does not fit or cannot be written."""
        data = request.SerializeToString()
        final = self.directory / f"{request.batch_id}{SUFFIX}"
        tmp = self.directory / f".{request.batch_id}.{os.getpid()}{TMP_SUFFIX}"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._used_bytes() + len(data) > self.max_bytes:
                logger.warning("spool directory is full (%d bytes); batch dropped", self.max_bytes)
                return None
            # tmp + fsync + rename: a reader sees either no file or the complete batch.
            with open(tmp, "wb", opener=_private_opener) as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, final)
            _fsync_directory(self.directory)
        except OSError as exc:
            logger.warning("cannot write spool file: %s", exc.strerror)
            _unlink(tmp)
            return None
        return final

    def load(self, budget: int) -> tuple[list[tuple[Path, ingest_pb2.ReportRequest]], int]:
        """Read spooled batches, oldest first, up to `budget` contributions in total.

        Returns the batches with their paths and how many corrupt files were moved aside
        (renamed to *.corrupt, kept for inspection and never read again).
        """
        batches: list[tuple[Path, ingest_pb2.ReportRequest]] = []
        corrupt = 0
        for path in self._batch_files():
            try:
                request = _read(path)
            except OSError:
                # Gone (another process sharing the directory sent it) or unreadable: skip it.
                continue
            if request is None:
                corrupt += 1
                _move_aside(path)
                continue
            size = len(request.contributions)
            if batches and size > budget:
                break
            budget -= size
            batches.append((path, request))
        return batches, corrupt

    def written_at(self, path: Path) -> float | None:
        """When the batch in `path` was written (Unix seconds), for the batch age limit."""
        try:
            return path.stat().st_mtime
        except OSError:
            return None

    def remove(self, path: Path) -> None:
        """Delete a batch the server acknowledged (or refused for good)."""
        _unlink(path)

    def _batch_files(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        now = time.time()
        files = []
        for entry in entries:
            try:
                if entry.name.endswith(SUFFIX) and entry.is_file():
                    files.append((entry.stat().st_mtime, Path(entry.path)))
                elif entry.name.endswith(TMP_SUFFIX) and now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                    _unlink(Path(entry.path))
            except OSError:
                continue
        return [path for _, path in sorted(files)]

    def _used_bytes(self) -> int:
        total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    total += entry.stat().st_size
                except OSError:
                    continue
        return total


def _read(path: Path) -> ingest_pb2.ReportRequest | None:
    """The batch in `path`, or None if the file is not one we wrote."""
    data = path.read_bytes()
    try:
        request = ingest_pb2.ReportRequest.FromString(data)
    except DecodeError:
        return None
    # Arbitrary bytes can parse as a message; the name check catches that and truncation.
    if request.batch_id != path.name.removesuffix(SUFFIX):
        return None
    return request


def _move_aside(path: Path) -> None:
    try:
        os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))
    except OSError:
        _unlink(path)
    logger.warning("corrupt spool file moved aside: %s", path.name)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened this way on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
