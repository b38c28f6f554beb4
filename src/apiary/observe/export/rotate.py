"""A JSON-lines file rotated by size, time and count, as lumberjack (Tetragon's and Hubble's writer) does it.

* The current file is ``PATH``; when a write would take it past ``max_bytes`` (or ``rotation_interval``
  seconds have passed) it is renamed ``<stem>-<UTC 2006-01-02T15-04-05.000><ext>`` and a new file opened;
  rotated files are gzipped (``<name>.gz``) when ``compress``; only the newest ``max_backups`` are kept
  (0: all).
* Writes never raise. A failed write (disk full, I/O error) is undone (the file is truncated back, so it
  stays whole lines), counted with the lines it lost and the error, and the next batch tries again.
* The file is checked before every batch: when ``PATH`` no longer is the open file (deleted, its directory
  deleted or replaced, rotated away by someone else) it is reopened; while its directory is missing every
  batch fails and is counted, and writing resumes when the directory is back. The directory is created at
  start only, never later (a directory that went away may be an unmounted volume).

Used from one thread (the agent's export writer).
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 64 << 10  # bytes written per write() call; a failure loses at most the lines of one chunk


@dataclass
class WriteStats:
    lines: int = 0  # lines written
    bytes: int = 0
    failed_lines: int = 0  # lines lost to failed writes (or no file)
    write_errors: int = 0  # failed write()/open() calls
    reopens: int = 0  # the file was reopened because PATH changed under us
    rotations: int = 0
    compress_errors: int = 0
    last_error: str = ""
    last_error_time: float = 0.0  # wall clock
    errors_by_errno: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "failed_lines": self.failed_lines,
            "write_errors": self.write_errors,
            "errors": dict(self.errors_by_errno),
            "reopens": self.reopens,
            "rotations": self.rotations,
            "compress_errors": self.compress_errors,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
        }


def backup_name(path: str, wall: float) -> str:
    """lumberjack's name for a rotated file: the stem, a UTC timestamp with milliseconds, the extension."""
    d, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    ms = int(wall * 1000) % 1000
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(wall)) + f".{ms:03d}"
    return os.path.join(d, f"{stem}-{stamp}{ext}")


class RotatingFile:
    def __init__(
        self,
        path: str,
        max_bytes: int,
        max_backups: int,
        compress: bool = False,
        rotation_interval: float = 0.0,
        perm: int = 0o600,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes, self.max_backups, self.compress = max_bytes, max_backups, compress
        self.rotation_interval, self.perm = rotation_interval, perm
        self.clock, self.wall = clock, wall
        self.stats = WriteStats()
        self.fd: int | None = None
        self.ino: tuple[int, int] | None = None
        self.size = 0
        self.opened_at = 0.0
        self.healthy = True  # the last batch was written whole
        self.last_backup = 0.0  # wall time in the newest backup's name

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        """Create the directory and open the file: a problem here is the user's to fix (OSError)."""
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.perm)
        st = os.fstat(fd)
        self.fd, self.ino, self.size, self.opened_at = fd, (st.st_dev, st.st_ino), st.st_size, self.clock()

    def _close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = None

    def _error(self, e: OSError, what: str) -> None:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        s = self.stats
        s.write_errors += 1
        s.errors_by_errno[name] = s.errors_by_errno.get(name, 0) + 1
        s.last_error = f"{what} {self.path}: {e.strerror or e} ({name})"
        s.last_error_time = self.wall()

    def _ensure_open(self) -> bool:
        """The file at PATH is the one open (reopened if not). False: it cannot be opened now (counted)."""
        try:
            st = os.stat(self.path)
            same = self.fd is not None and (st.st_dev, st.st_ino) == self.ino
        except OSError:
            same = False
        if same:
            return True
        if self.fd is not None:
            self.stats.reopens += 1
        self._close()
        try:
            self._open()
            return True
        except OSError as e:
            self._error(e, "cannot open")
            return False

    # ------------------------------------------------------------------ writing
    def write_lines(self, lines: list[bytes]) -> int:
        """Append the lines (each ending in a newline); returns how many were written."""
        if not lines:
            return 0
        if self.rotation_interval > 0 and self.fd is not None and self.size > 0:
            if self.clock() - self.opened_at >= self.rotation_interval:
                self.rotate()
        if not self._ensure_open():
            self.stats.failed_lines += len(lines)
            self.healthy = False
            return 0
        written = 0
        ok = True
        chunk: list[bytes] = []
        n = 0

        def flush() -> None:
            nonlocal written, ok, n
            if self._write_chunk(b"".join(chunk)):
                written += len(chunk)
            else:
                self.stats.failed_lines += len(chunk)
                ok = False
            chunk.clear()
            n = 0

        i = 0
        while i < len(lines):
            line = lines[i]
            if self.max_bytes and self.size + n + len(line) > self.max_bytes and self.size + n > 0:
                if chunk:  # what fits goes into this file first
                    flush()
                    continue
                self.rotate()
                if self.fd is None:  # no new file: the rest is lost (counted)
                    self.stats.failed_lines += len(lines) - i
                    ok = False
                    break
                continue
            chunk.append(line)
            n += len(line)
            i += 1
            if n >= CHUNK:
                flush()
        if chunk:
            flush()
        self.stats.lines += written
        self.healthy = ok
        return written

    def _write_chunk(self, data: bytes) -> bool:
        assert self.fd is not None
        start = self.size
        view = memoryview(data)
        try:
            while view:
                k = os.write(self.fd, view)
                view = view[k:]
                self.size += k
        except OSError as e:
            self._error(e, "cannot write")
            try:  # whole lines only: what part of the chunk landed goes again
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            self.size = start
            return False
        self.stats.bytes += len(data)
        return True

    # ------------------------------------------------------------------ rotation
    def rotate(self) -> None:
        """Rename the current file to its backup name, open a new one, compress and prune the backups."""
        self._close()
        wall = max(self.wall(), self.last_backup + 0.001)  # names sort in rotation order, never collide
        target = backup_name(self.path, wall)
        while os.path.exists(target) or os.path.exists(target + ".gz"):
            wall += 0.001
            target = backup_name(self.path, wall)
        self.last_backup = wall
        try:
            os.rename(self.path, target)
            self.stats.rotations += 1
        except FileNotFoundError:
            target = ""
        except OSError as e:
            self._error(e, "cannot rotate")
            target = ""
        try:
            self._open()
        except OSError as e:
            self._error(e, "cannot open")
        if target and self.compress:
            self._gzip(target)
        self._prune()

    def _gzip(self, src: str) -> None:
        dst = src + ".gz"
        try:
            with open(src, "rb") as fi, gzip.open(dst, "wb") as fo:
                shutil.copyfileobj(fi, fo, CHUNK)
            os.chmod(dst, self.perm)
            os.unlink(src)
        except OSError as e:  # disk full: keep the uncompressed backup
            self.stats.compress_errors += 1
            self._error(e, "cannot compress")
            try:
                os.unlink(dst)
            except OSError:
                pass

    def backups(self) -> list[str]:
        """Rotated files of this PATH, oldest first (by the timestamp in their names)."""
        d, base = os.path.split(self.path)
        stem, ext = os.path.splitext(base)
        try:
            names = os.listdir(d)
        except OSError:
            return []
        out = []
        for n in names:
            plain = n.removesuffix(".gz")
            if plain.startswith(stem + "-") and plain.endswith(ext) and n != base:
                out.append(n)
        return [os.path.join(d, n) for n in sorted(out, key=lambda n: n.removesuffix(".gz"))]

    def _prune(self) -> None:
        if self.max_backups <= 0:
            return
        old = self.backups()
        for p in old[: max(0, len(old) - self.max_backups)]:
            try:
                os.unlink(p)
            except OSError:
                pass

    def close(self) -> None:
        self._close()
