"""The agent's own HAProxy process: started, reloaded and stopped by PID (never the system service),
restarted when it dies, in a cgroup of its own (the datapath recognises the proxy's connections by it),
with an ip rule that delivers redirected packets locally, and its access log read from a unix datagram
socket.

While HAProxy is down its listener is gone: the datapath's socket lookup fails and redirected connections
are dropped (``SOCKET_LOOKUP_FAILED``): traffic that needs the proxy fails closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .config import ProxyConfig, build, ids_map
from .leftovers import RULE_PRIORITY, proxy_cgroup, rule_numbers, unroute


class ProxyError(RuntimeError):
    pass


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


class HAProxy:
    """``on_log(record)`` gets every access-log record (a dict of strings)."""

    def __init__(self, state_dir: str | Path, instance: str, cgroup_root: str | Path, port: int = 0,
                 on_log: Callable[[dict[str, str]], None] | None = None) -> None:
        self.dir = Path(state_dir) / "l7proxy"
        self.instance = instance
        self.table, self.mark = rule_numbers(instance)  # redirected packets: the ip rule sends them to the table
        self.port = port or 15000 + zlib.crc32(instance.encode()) % 30000 % 5000
        self.cgroup = proxy_cgroup(cgroup_root, instance)
        self.on_log = on_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.down_since: float | None = None
        self.gaps: list[tuple[float, float]] = []  # (went down, back up): reported by status
        self.records = 0
        self.bad_records = 0
        self.notices = 0
        self.config = ProxyConfig("")
        self.ids: dict[str, str] = {}
        self.log_sock: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def cgroup_id(self) -> int:
        return os.stat(self.cgroup).st_ino

    def start(self) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise ProxyError("haproxy is not installed (apt-get install haproxy)")
        self.binary = binary
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cgroup.mkdir(exist_ok=True)
        self._stop_stale()
        self._route()
        path = self.dir / "log.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.log_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.log_sock.bind(str(path))
        self.log_sock.setblocking(False)
        self.log_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._write(build({}, {}, port=self.port, state_dir=str(self.dir)), {})
        self._spawn()

    def _stop_stale(self) -> None:
        """An agent killed without its clean stop leaves its HAProxy running: end it by its pidfile's PID,
        only if that process is HAProxy on this agent's configuration."""
        try:
            pid = int((self.dir / "haproxy.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if any(a.endswith(b"haproxy") for a in cmdline[:1]) and str(self.dir / "haproxy.cfg").encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def _route(self) -> None:
        """Packets the datapath redirected keep their original destination: route them to this host."""
        with IPRoute() as ipr:
            with contextlib.suppress(NetlinkError):
                ipr.rule("del", fwmark=self.mark, fwmask=0xFFFFFFFF, table=self.table, priority=RULE_PRIORITY)
            ipr.rule("add", fwmark=self.mark, fwmask=0xFFFFFFFF, table=self.table, priority=RULE_PRIORITY)
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.route("replace", dst="0.0.0.0/0", type="local", oif=lo, table=self.table, scope="host")

    def _unroute(self) -> None:
        unroute(self.instance)

    def _spawn(self) -> None:
        procs = self.cgroup / "cgroup.procs"
        cfg = self.dir / "haproxy.cfg"
        # the shell joins the cgroup, then becomes HAProxy's master: every socket HAProxy opens is in it
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$0" -W -db -f "{cfg}"', self.binary],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.dir / "haproxy.err", "ab"),
            start_new_session=True,
        )
        if not self._wait_listening(10.0):
            raise ProxyError(f"haproxy did not start: {self._errors()}")

    def _errors(self) -> str:
        try:
            return (self.dir / "haproxy.err").read_text()[-2000:].strip()
        except OSError:
            return ""

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return True
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> bool:
        """Restart a dead HAProxy (the gap is recorded); True when it had to."""
        if self.proc is None or self.alive():
            return False
        now = time.time()
        self.down_since = self.down_since or now
        try:
            self._spawn()
        except ProxyError:
            return True
        self.gaps.append((self.down_since, time.time()))
        self.down_since = None
        self.restarts += 1
        return True

    def close(self, keep_route: bool = False) -> None:
        """Stop HAProxy; ``keep_route``: leave the ip rule for redirected packets (the DNS proxy's sockets
        outlive the agent in their holder, and the rule delivers the queries to them)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self.log_sock is not None:
            self.log_sock.close()
            self.log_sock = None
        if not keep_route:
            self._unroute()
        with contextlib.suppress(OSError):  # busy while the DNS socket holder is in it
            self.cgroup.rmdir()

    # ------------------------------------------------------------------ policy
    def _write(self, cfg: ProxyConfig, ids: Mapping[str, str]) -> None:
        for name, text in cfg.files.items():
            (self.dir / name).write_text(text)
        (self.dir / "ids.map").write_text("".join(f"{k} {v}\n" for k, v in sorted(ids.items())))
        tmp = self.dir / "haproxy.cfg.tmp"
        tmp.write_text(cfg.text)
        os.replace(tmp, self.dir / "haproxy.cfg")
        self.config, self.ids = cfg, dict(ids)

    def update(self, l7: Mapping[Any, Any], addresses: Mapping[int, str], ipcache: Mapping[str, int]) -> None:
        """New rules: a graceful reload (old workers finish their connections); new identities only: the
        runtime API changes the map in place."""
        cfg = build(l7, addresses, port=self.port, state_dir=str(self.dir))
        ids = ids_map(ipcache)
        if cfg.text == self.config.text and cfg.files == self.config.files:
            self.config = cfg  # same text, but its rules name this compile's rule ids (the access log's key)
            if ids != self.ids:
                self._update_map(ids)
            return
        self._write(cfg, ids)
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGUSR2)  # master-worker reload

    def _update_map(self, ids: Mapping[str, str]) -> None:
        path = self.dir / "ids.map"
        cmds = [f"del map {path} {k}" for k in self.ids if k not in ids]
        cmds += [f"{'set' if k in self.ids else 'add'} map {path} {k} {v}" for k, v in ids.items()
                 if self.ids.get(k) != v]
        (self.dir / "ids.map").write_text("".join(f"{k} {v}\n" for k, v in sorted(ids.items())))
        self.ids = dict(ids)
        if cmds and self.alive():
            self.runtime(";".join(cmds))

    def runtime(self, command: str) -> str:
        """One command (or several joined by ';') on HAProxy's runtime API."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.dir / "admin.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode(errors="replace")

    # ------------------------------------------------------------------ access log
    def fileno(self) -> int:
        return self.log_sock.fileno() if self.log_sock is not None else -1

    def drain(self) -> int:
        n = 0
        while self.log_sock is not None:
            try:
                data = self.log_sock.recv(65536)
            except BlockingIOError:
                break
            n += 1
            text = data.decode("utf-8", errors="replace").strip()
            if not text.startswith("{"):  # HAProxy's own notices (proxy started, worker exited, ...)
                self.notices += 1
                continue
            try:
                rec = json.loads(text)
            except ValueError:
                self.bad_records += 1
                continue
            self.records += 1
            if self.on_log is not None:
                try:
                    self.on_log(rec)
                except (ValueError, KeyError, IndexError, TypeError):  # counted, never stops the stream
                    self.bad_records += 1
        return n

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc is not None else None, "alive": self.alive(), "port": self.port,
            "restarts": self.restarts, "gaps": [{"down": a, "up": b} for a, b in self.gaps],
            "access_log_records": self.records, "bad_records": self.bad_records,
            "notices": self.notices,
            "filters": len(self.config.filters), "http_rules": len(self.config.rules),
        }
