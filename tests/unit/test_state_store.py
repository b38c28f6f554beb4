"""The embedded state store: atomic, durable writes; a crash mid-write loses nothing accepted."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from apiary.store import FileStore, Store, StoreError


def test_put_get_delete_list(tmp_path: Path) -> None:
    s: Store = FileStore(tmp_path / "state")
    assert s.get("policies.json") is None and s.list() == []
    s.put("policies.json", b"one")
    s.put("services.json", b"two")
    assert s.get("policies.json") == b"one"
    assert s.list() == ["policies.json", "services.json"] and s.list("serv") == ["services.json"]
    assert s.delete("policies.json") and not s.delete("policies.json")
    assert s.list() == ["services.json"]


@pytest.mark.parametrize("key", ["", "../x", "a/b", "x.tmp", ".hidden"])
def test_bad_keys_are_refused_with_the_reason(tmp_path: Path, key: str) -> None:
    with pytest.raises(StoreError, match="state key"):
        FileStore(tmp_path).put(key, b"x")
    assert os.listdir(tmp_path) == []


def test_a_crash_mid_write_keeps_the_accepted_value(tmp_path: Path) -> None:
    s = FileStore(tmp_path)
    s.put("k", b"accepted")
    real_write = os.write

    def torn(fd: int, data: object) -> int:  # half the bytes reach the temp file, then the process "dies"
        real_write(fd, bytes(data)[:3])  # type: ignore[call-overload]
        raise SystemExit("crash")

    with mock.patch("apiary.store.os.write", torn), pytest.raises(SystemExit):
        s.put("k", b"the new value")
    assert s.get("k") == b"accepted"  # the torn write is in a temp file only
    assert s.list() == ["k"]  # and the temp file is not a key
    s.put("k", b"next")  # the next write of the key replaces the leftover
    assert s.get("k") == b"next" and sorted(os.listdir(tmp_path)) == ["k"]


def test_a_crash_before_the_rename_keeps_the_accepted_value(tmp_path: Path) -> None:
    s = FileStore(tmp_path)
    s.put("k", b"accepted")
    with mock.patch("apiary.store.os.replace", side_effect=SystemExit("crash")), pytest.raises(SystemExit):
        s.put("k", b"new")
    assert FileStore(tmp_path).get("k") == b"accepted"


def test_every_write_is_fsynced_before_and_after_the_rename(tmp_path: Path) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    with mock.patch("apiary.store.os.fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1]), \
            mock.patch("apiary.store.os.replace", lambda a, b: (calls.append("rename"), real_replace(a, b))[1]):
        FileStore(tmp_path).put("k", b"v")
    assert calls == ["fsync", "rename", "fsync"]  # the file, then the directory entry
