"""A real Prometheus server on loopback for tests, and the metric names of an exposition and of PromQL text."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                 "offset", "inf", "nan"}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exposed_names(text: str) -> set[str]:
    """Every metric name of a Prometheus text exposition: its TYPE lines (series with no sample yet count)
    and its sample names (``_total``, ``_created`` ...)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, keywords, labels or numbers)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    s = re.sub(r"\{[^}]*\}", " ", s)  # matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    out = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        if s[m.end():].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or an aggregation
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # 1e3, 5m
        out.add(word)
    return out


class PrometheusServer:
    """``prometheus`` (Debian's package) scraping ``targets`` every second, on a loopback port, with its own
    config and storage in a temp dir; stopped by its PID."""

    def __init__(self, targets: list[str], job: str = "apiary", rule_files: tuple[str, ...] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="apiary-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = "".join(f"  - {r}\n" for r in rule_files)
        cfg = (
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            + (f"rule_files:\n{rules}" if rule_files else "")
            + f"scrape_configs:\n- job_name: {job}\n  static_configs:\n  - targets: {targets!r}\n"
        )
        (self.dir / "prometheus.yml").write_text(cfg)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus; scripts/setup.sh does)")
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not get ready in {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API; raises on a PromQL error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r}: {body.get('errorType')}: {body.get('error')}")
        return list(body["data"]["result"])

    def wait_for(self, expr: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        """The result of ``expr`` once it is not empty (Prometheus scrapes every second)."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(expr)
            if res or time.monotonic() > deadline:
                return res
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
