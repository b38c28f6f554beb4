"""The agent's own HAProxy process: started, reloaded and stopped by PID (never the system service),
restarted when it dies, in a cgroup of its own (the datapath recognises the proxy's connections by it),
with an ip rule that delivers redirected packets locally, and its access log read from a pipe.

The access log is HAProxy's stdout (``log stdout``), a non-blocking pipe of 4 MiB (1 MiB where
``fs.pipe-max-size`` bounds it) the agent reads in batches
(one read takes every line written since the last): a unix datagram socket would hold only
``net.unix.max_dgram_qlen`` (10 by default) records before HAProxy drops the next ones. A record HAProxy
could not write (the pipe full) is counted by HAProxy (``DroppedLogs``); the agent adds them up per worker
and shows them (``apiary status``: ``l7_proxy.dropped_records``).

While HAProxy is down its listener is gone: the datapath's socket lookup fails and redirected connections
are dropped (``SOCKET_LOOKUP_FAILED``): traffic that needs the proxy fails closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
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

from apiary.policy.types import HttpRule

from .config import LOG_HEAD, LOG_MARK, ProxyConfig, build, ids_map
from .leftovers import RULE_PRIORITY, proxy_cgroup, rule_numbers, unroute

LOG_PIPE_SIZE = 4 << 20
READ_SIZE = 256 << 10


class ProxyError(RuntimeError):
    pass


class ConfigError(ProxyError):
    """HAProxy cannot load the configuration of these rules (``haproxy -c``): ``rule`` and ``field`` name the
    HTTP rule and its field whose pattern it refused, when its message says which (else None, "")."""

    def __init__(self, message: str, rule: HttpRule | None = None, field: str = "") -> None:
        super().__init__(message)
        self.rule, self.field = rule, field


EPOCHS_KEPT = 16  # configurations whose logged numbers can still be read (a request spanning 15 flips)
_CLI_SAFE = re.compile(r"[ -~]*")  # printable ASCII: a pattern the runtime API carries exactly as the file does
_CLI_BATCH = 8000  # bytes of commands in one runtime API request (HAProxy reads each into its 16 KiB buffer)
_GEN_LINE = re.compile(r"0x[0-9a-f]+ active \d+")  # show map gen.map


def cli_escape(arg: str) -> str:
    """One argument of a runtime API command: HAProxy splits on blanks and ';', and unescapes '\\'."""
    return re.sub(r"([\\; \t])", r"\\\1", arg)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


class HAProxy:
    """``on_log(records)`` gets the access-log records a batch at a time, each as ``LOG_MARK``, the fields of
    ``LOG_HEAD`` and the JSON (bytes), and returns how many of them it could not use."""

    def __init__(self, state_dir: str | Path, instance: str, cgroup_root: str | Path, port: int = 0,
                 on_log: Callable[[list[list[bytes]]], int] | None = None) -> None:
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
        self.reloads = 0  # rule changes of a new shape (SIGUSR2)
        self.hot_updates = 0  # rule changes loaded through the runtime API (no reload)
        self.last_error = ""
        self.config = ProxyConfig("")
        self._by_epoch: dict[int, ProxyConfig] = {}  # the last EPOCHS_KEPT configurations, by gen.map's epoch
        self.ids: dict[str, str] = {}
        self.dropped = 0  # access-log records HAProxy could not write (pipe full): the workers' DroppedLogs
        self._dropped_by_pid: dict[str, int] = {}
        self._log_r = self._log_w = -1  # the access log's pipe: HAProxy's stdout, read by the agent
        self._partial = b""  # the start of a line whose end is not read yet

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
        self._log_r, self._log_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # HAProxy never blocks on it
        for size in (LOG_PIPE_SIZE, 1 << 20):  # above fs.pipe-max-size needs CAP_SYS_RESOURCE
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._log_w, fcntl.F_SETPIPE_SZ, size)
                break
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
            stdin=subprocess.DEVNULL, stdout=self._log_w, stderr=open(self.dir / "haproxy.err", "ab"),
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
        """Restart a dead HAProxy (the gap is recorded); True when it had to. A live one: its dropped
        access-log records are counted."""
        if self.proc is None:
            return False
        if self.alive():
            self.count_dropped()
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
        for fd in (self._log_r, self._log_w):
            if fd >= 0:
                os.close(fd)
        self._log_r = self._log_w = -1
        if not keep_route:
            self._unroute()
        with contextlib.suppress(OSError):  # busy while the DNS socket holder is in it
            self.cgroup.rmdir()

    # ------------------------------------------------------------------ policy
    def config_for(self, gen: str | bytes | None) -> ProxyConfig:
        """The configuration a logged request was judged by (its ``gen``: the epoch then), for the meaning of
        its rule and filter numbers; the current one when that epoch is no longer kept (or unknown)."""
        try:
            return self._by_epoch.get(int(gen or ""), self.config)
        except ValueError:
            return self.config

    def _keep(self, cfg: ProxyConfig) -> None:
        self.config = cfg
        self._by_epoch[cfg.epoch] = cfg
        for old in sorted(self._by_epoch)[:-EPOCHS_KEPT]:
            del self._by_epoch[old]

    def _write(self, cfg: ProxyConfig, ids: Mapping[str, str]) -> None:
        for name, text in cfg.files.items():
            (self.dir / name).write_text(text)
        (self.dir / "ids.map").write_text("".join(f"{k} {v}\n" for k, v in sorted(ids.items())))
        tmp = self.dir / "haproxy.cfg.tmp"
        tmp.write_text(cfg.text)
        os.replace(tmp, self.dir / "haproxy.cfg")
        self._keep(cfg)
        self.ids = dict(ids)

    def update(self, l7: Mapping[Any, Any], addresses: Mapping[int, str], ipcache: Mapping[str, int]) -> None:
        """New rules that fit the running layout (see ``config.build``): loaded through the runtime API into
        the idle buffer, then one flip of ``gen.map``; no reload, every connection stays and its next request
        is judged by the new rules. Rules of a new shape: a graceful reload (old workers finish their
        connections; an idle keep-alive connection is closed). New identities only: the map in place."""
        prev = self.config
        cfg = build(l7, addresses, port=self.port, state_dir=str(self.dir), previous=prev)
        ids = ids_map(ipcache)
        if cfg.text == prev.text and cfg.files == prev.files:
            self._keep(cfg)  # same text, but its rules name this compile's rule ids (the access log's key)
            if ids != self.ids:
                self._update_map(ids)
            return
        self._check(cfg, ids)
        hot = cfg.text == prev.text and self.alive()
        if hot:
            try:
                self._update_map(ids)  # identities first: the new rules may name them
            except OSError as e:  # the reload below reads ids.map, written first
                hot = False
                self.notices += 1
                self.last_error = f"runtime update failed, reloaded instead: {e}"
        self._write(cfg, ids)
        if not self.alive():
            return
        assert self.proc is not None
        if hot:
            try:
                self._load(prev, cfg)
                self.hot_updates += 1
                return
            except (OSError, ProxyError) as e:  # the reload reads the files just written
                self.notices += 1
                self.last_error = f"runtime update failed, reloaded instead: {e}"
        self.reloads += 1
        self._reload()

    def _reload(self) -> None:
        """A master-worker reload (SIGUSR2), waited for: back once the new worker answers on the runtime API.
        Until then the socket may be the old worker's, or none; a runtime change sent meanwhile could reach
        the old worker only, and the new one would miss it."""
        assert self.proc is not None
        old = self._worker_pid(wait=True)  # a HAProxy just started may not answer yet
        os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.alive():
            pid = self._worker_pid()
            if pid is not None and pid != old:
                return
            time.sleep(0.02)
        self.notices += 1
        self.last_error = "reload: no new HAProxy worker answered within 15 s"

    def _worker_pid(self, wait: bool = False) -> str | None:
        try:
            out = self.runtime("show info") if wait else self._runtime_once("show info")
        except OSError:
            return None
        return next((line.split(": ", 1)[1].strip() for line in out.splitlines() if line.startswith("Pid: ")), None)

    def _load(self, prev: ProxyConfig, cfg: ProxyConfig) -> None:
        """The new active buffer's changed pattern files and the local endpoints' list (added before removed),
        each batch proven read whole; only then, in a request of its own, the flip: the requests that follow
        are judged by the new files, all at once. Any doubt (a refusal, a batch not read to its end, a
        pattern the runtime API could not carry as the file does) raises ProxyError before the flip: the
        caller reloads from the files, and the idle buffer, half loaded, was never judging."""
        d = self.dir
        cmds = []
        for name, text in cfg.buffer_files(cfg.active).items():
            if prev.files.get(name) == text:
                continue
            patterns = text.split("\n")  # the file reader's lines: split at "\n" only
            if patterns and patterns[-1] == "":
                patterns.pop()
            if any(not _CLI_SAFE.fullmatch(p) for p in patterns):
                raise ProxyError(f"{name}: a pattern with a character outside printable ASCII")
            cmds.append(f"clear acl {d / name}")
            cmds += [f"add acl {d / name} {cli_escape(p)}" for p in patterns]
        new_eps = set(cfg.files["endpoints.lst"].split())
        old_eps = set(prev.files.get("endpoints.lst", "").split())
        cmds += [f"add acl {d}/endpoints.lst {a}" for a in sorted(new_eps - old_eps)]
        cmds += [f"del acl {d}/endpoints.lst {a}" for a in sorted(old_eps - new_eps)]
        if any(len(c.encode()) > _CLI_BATCH for c in cmds):
            raise ProxyError("a pattern too long for one runtime API command")
        batch: list[str] = []
        size = 0
        for i, cmd in enumerate(cmds):
            batch.append(cmd)
            size += len(cmd.encode()) + 1
            if i == len(cmds) - 1 or size + len(cmds[i + 1].encode()) > _CLI_BATCH:
                self._proven(batch, None)
                batch, size = [], 0
        if cfg.epoch != prev.epoch:
            self._proven([f"set map {d}/gen.map active {cfg.epoch}"], cfg.epoch)

    def _proven(self, batch: list[str], active: int | None) -> None:
        """Run ``batch`` and then ``show map gen.map``: its answer, and nothing else, proves every command was
        read and done (HAProxy goes on after a refused command and ends a session silently on a command
        longer than its buffer); ``active``: the value gen.map must show now."""
        out = self.runtime(";".join([*batch, f"show map {self.dir}/gen.map"]))
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        shown = [line for line in lines if _GEN_LINE.fullmatch(line)]
        others = [line for line in lines if line not in shown]
        if others:
            raise ProxyError(f"HAProxy refused a runtime update: {others[0]}")
        if len(shown) != 1:
            raise ProxyError("HAProxy did not read a runtime update to its end")
        if active is not None and not shown[0].endswith(f" active {active}"):
            raise ProxyError(f"gen.map shows {shown[0]!r} after the flip")

    def _check(self, cfg: ProxyConfig, ids: Mapping[str, str]) -> None:
        """``haproxy -c`` on the new rules (written apart, in ``check/``) before they replace the running ones:
        a reload HAProxy refuses (a regex PCRE cannot compile) would leave the old rules enforced while the
        policy is reported applied. ``ConfigError`` names the rule and field it refused."""
        d = self.dir / "check"
        d.mkdir(exist_ok=True, mode=0o700)
        for name, text in cfg.files.items():
            (d / name).write_text(text)
        (d / "ids.map").write_text("".join(f"{k} {v}\n" for k, v in sorted(ids.items())))
        # the configuration names the running directory's files: the check reads its own copies
        (d / "haproxy.cfg").write_text(cfg.text.replace(f"{self.dir}/", f"{d}/"))
        binary = getattr(self, "binary", None) or haproxy_binary() or "haproxy"
        try:
            r = subprocess.run([binary, "-c", "-f", str(d / "haproxy.cfg")], capture_output=True, text=True,
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"haproxy could not check the new rules: {e}") from e
        if r.returncode == 0:
            return
        out = (r.stdout + r.stderr).strip()
        alerts = [line.split(" : ", 2)[-1] for line in out.splitlines() if "[ALERT]" in line]
        why = alerts[0] if alerts else out[-500:]
        m = re.search(r"file '[^']*/([^'/]+\.pat)'", out)
        source = cfg.sources.get(m.group(1)) if m else None
        if source is None:
            raise ConfigError(f"haproxy refuses the new rules: {why}")
        rule = cfg.rules[source[0]]
        m = re.search(r"regex '.*' is invalid \((.*)\) at line", why)
        raise ConfigError(f"haproxy cannot use this regular expression ({m.group(1) if m else why})", rule,
                          source[1])

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
        """One command (or several joined by ';') on HAProxy's runtime API. A socket that refuses (HAProxy
        starting: its worker binds it after the listener) is tried again for up to 5 s."""
        deadline = time.monotonic() + 5
        while True:
            try:
                return self._runtime_once(command)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline or not self.alive():
                    raise
                time.sleep(0.02)

    def _runtime_once(self, command: str) -> str:
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
        return self._log_r

    def drain(self) -> int:
        """Every complete line in the pipe, in one batch per read; returns the lines read."""
        n = 0
        while self._log_r >= 0:
            try:
                data = os.read(self._log_r, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            n += len(lines)
            self._records(lines)
        return n

    def _records(self, lines: list[bytes]) -> None:
        """Each record split into its head's fields and its JSON (config.py LOG_FORMAT): the JSON is parsed only
        when the request's flows are first read (at 25,000 requests/s, parsing each was 5% of a core)."""
        mark, fields = LOG_MARK.encode() + b" ", len(LOG_HEAD) + 1
        recs: list[list[bytes]] = []
        for line in lines:
            if not line.startswith(mark):  # HAProxy's own notices (proxy started, worker exited, ...)
                if line.strip():
                    self.notices += 1
                continue
            rec = line.split(b" ", fields)
            if len(rec) != fields + 1 or not rec[-1].startswith(b"{"):
                self.bad_records += 1
                continue
            recs.append(rec)
        self.records += len(recs)
        if self.on_log is not None and recs:
            self.bad_records += self.on_log(recs)  # the ones it could not use: counted, never a stopped stream

    def count_dropped(self) -> int:
        """Add up the workers' ``DroppedLogs`` (a reload starts a worker at 0, so per worker PID)."""
        if not self.alive():
            return self.dropped
        try:
            info = dict(line.split(": ", 1) for line in self.runtime("show info").splitlines() if ": " in line)
            self._dropped_by_pid[info["Pid"]] = int(info["DroppedLogs"])
        except (OSError, KeyError, ValueError):
            return self.dropped
        self.dropped = sum(self._dropped_by_pid.values())
        return self.dropped

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc is not None else None, "alive": self.alive(), "port": self.port,
            "restarts": self.restarts, "gaps": [{"down": a, "up": b} for a, b in self.gaps],
            "access_log_records": self.records, "bad_records": self.bad_records,
            "notices": self.notices, "dropped_records": self.count_dropped(),
            "filters": len(self.config.buffer_filters()), "http_rules": len(self.config.buffer_rules()),
            "reloads": self.reloads, "hot_updates": self.hot_updates, "last_error": self.last_error,
        }
