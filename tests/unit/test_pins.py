"""Pure parts of the pin layout: pin file names for attach names, binary-map entries from /proc paths."""

from __future__ import annotations

from pathlib import Path

from apiary.sensors.pins import link_file
from apiary.sensors.process.sensor import BIN_MAX, binary_entry


def test_link_file_names_are_single_bpffs_names_and_distinct() -> None:
    names = [
        "openat",
        "__exit_openat",
        "__tp_sched/sched_process_exec",
        "__uprobe_/usr/lib/libc.so.6:malloc",
        "@connect4",
    ]
    files = [link_file(n) for n in names]
    assert all("/" not in f and 0 < len(f) <= 200 for f in files)
    assert len(set(files)) == len(files)
    assert link_file("openat") == "openat" and link_file("@connect4") == "%40connect4"
    long_a, long_b = "__uprobe_/" + "a" * 300 + ":f", "__uprobe_/" + "a" * 300 + ":g"
    assert link_file(long_a) != link_file(long_b) and len(link_file(long_a)) <= 200


def test_binary_entry_is_the_exec_programs_layout(tmp_path: Path) -> None:
    raw = binary_entry("/usr/bin/dash")
    assert raw is not None and len(raw) == 4 + BIN_MAX
    assert int.from_bytes(raw[:4], "little") == len("/usr/bin/dash")
    assert raw[4 : 4 + 13] == b"/usr/bin/dash" and raw[4 + 13] == 0
    long = "/" + "x" * 400
    cut = binary_entry(long)
    assert cut is not None and int.from_bytes(cut[:4], "little") == BIN_MAX - 1 and cut[-1] == 0
    assert binary_entry("sleep") is None and binary_entry("") is None  # not a path: nothing to match
    gone = tmp_path / "gone"
    assert binary_entry(f"{gone} (deleted)") == binary_entry(str(gone))  # the kernel's walk has no suffix
    kept = tmp_path / "real (deleted)"
    kept.write_text("")
    assert int.from_bytes(binary_entry(str(kept))[:4], "little") == len(str(kept))  # type: ignore[index]
