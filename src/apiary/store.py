"""The agent's state store: small documents by key, behind a Protocol an etcd store could implement next.

The embedded store (the default) keeps one file per key in the state directory. A write is atomic and
durable: the new text goes to a temporary file in the same directory, is fsync'd, renamed over the key's
file, and the directory is fsync'd. A crash at any point leaves the previous value or the new one, never a
mix, and a put that returned is on disk. Left-over temporary files (a crash mid-write) are ignored by reads
and listings and removed by the next write of their key.

The agent builds ONE store from its config (``apiary.agent.statedir.open_store``: a FileStore on the state
directory) and hands it to every component that keeps desired state, each under its own key (the file names
of the state directory, unchanged): policies.json, tracingpolicies.json, services.json, prefilter.json,
fqdn-cache.json, identities.json, endpoints.json and endpoints.journal (the intent record of an endpoint
creation or deletion, written before the kernel changes). The offline commands (`apiary ... delete
--offline`) open the same store on the directory they lock.

Not through the store, and node-local whatever the store: the state directory's lock (agent.lock: a flock
and the holder's pid), the DNS proxy socket holder's record (dnsproxy-holder.json: a pid, its start time and
the descriptor numbers and inodes of the sockets it holds; sensors/dnsproxy/holder.py keeps it in the state
directory itself), the L7 proxy's generated configuration and sockets, the API and gRPC sockets, and the
manifests kept with the pins in bpffs (they describe kernel objects a next agent adopts).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

TMP_SUFFIX = ".tmp"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class StoreError(ValueError):
    """A bad key, or a store that cannot be read or written."""


class Store(Protocol):
    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it has none."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``: when this returns, it survives a crash."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when it had no value."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """The keys with a value (sorted), those starting with ``prefix``."""
        ...


def describe(store: Store, key: str) -> str:
    """Where ``key`` is kept, for messages: its file for the embedded store."""
    return str(store.dir / key) if isinstance(store, FileStore) else f"{key} (state store)"


def check_key(key: str) -> str:
    if not _KEY.match(key) or key.endswith(TMP_SUFFIX) or ".." in key:
        raise StoreError(f"state key {key!r}: letters, digits, '.', '_' and '-' only (1-201 characters, "
                         f"not ending in {TMP_SUFFIX})")
    return key


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class FileStore:
    """The embedded store: ``<directory>/<key>`` per key."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _path(self, key: str) -> Path:
        return self.dir / check_key(key)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"state key {key!r}: cannot read {self.dir / key}: {e.strerror}") from e

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            atomic_write(path, value)
        except OSError as e:
            raise StoreError(f"state key {key!r}: cannot write {path}: {e.strerror}") from e

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.dir)
        return True

    def list(self, prefix: str = "") -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(n for n in os.listdir(self.dir)
                      if n.startswith(prefix) and _KEY.match(n) and not n.endswith(TMP_SUFFIX)
                      and (self.dir / n).is_file())
