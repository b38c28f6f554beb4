"""The DNS socket holder is only trusted (taken from, killed) when everything recorded about it still holds."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from apiary.sensors.dnsproxy import holder


def test_a_holder_record_is_trusted_only_when_pid_start_time_cgroup_and_sockets_match(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        me, start = os.getpid(), holder._start_time(os.getpid())
        assert start
        cg = tmp_path / "cg"
        cg.mkdir()
        (cg / "cgroup.procs").write_text(f"1\n{me}\n")
        ino = os.fstat(u.fileno()).st_ino, os.fstat(t.fileno()).st_ino
        rec = holder.HolderRecord(me, start, 53, u.fileno(), t.fileno(), *ino)
        assert holder.verified(rec, cg)
        reused = holder.HolderRecord(me, start + 1, 53, u.fileno(), t.fileno(), *ino)  # a PID of another process
        swapped = holder.HolderRecord(me, start, 53, t.fileno(), u.fileno(), *ino)  # not the recorded sockets
        assert not holder.verified(reused, cg) and not holder.verified(swapped, cg)
        (cg / "cgroup.procs").write_text("1\n")
        assert not holder.verified(rec, cg)  # not in our proxy cgroup: never taken from nor killed
        assert holder.take(rec, cg) is None
        # a record of a holder that is not ours is forgotten, and nothing is killed
        holder.FileStore(tmp_path).put(holder.STATE_KEY, b'{"pid": 1, "start_time": 0, "port": 1, "udp_fd": 3, '
                                       b'"tcp_fd": 4, "udp_inode": 1, "tcp_inode": 2}')
        assert holder.load(tmp_path) is not None
        assert not holder.stop(tmp_path, cg) and holder.load(tmp_path) is None
