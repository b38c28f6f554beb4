"""Export with a real agent: real execs and real flows in the files, rotation, gzip, filters, field filters,
the rate limit's rate_limit_info record, a deleted directory and a full disk (a small tmpfs), OTLP."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

NS = "test-namespace"


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return [json.loads(line) for line in data.decode().splitlines()]  # every line whole JSON


def run_marked(marker: str, n: int = 1) -> None:
    """``n`` execs of /bin/sh whose arguments carry ``marker``."""
    for _ in range(n):
        subprocess.run(["/bin/sh", "-c", f": {marker}"], check=True)


def execs_with(evs: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    return [e for e in evs if marker in (e.get("process_exec") or {}).get("process", {}).get("arguments", "")]


def export_status(agent: AgentProcess) -> dict[str, Any]:
    return agent.client().get("/v1/status")["export"]


@pytest.fixture
def tmp_out() -> Iterator[Path]:
    d = Path(f"/tmp/apiary-export-{uuid.uuid4().hex[:10]}")
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_real_exec_and_flow_are_exported_with_their_shapes(tmp_out: Path) -> None:
    ev_path, fl_path = tmp_out / "tetragon" / "tetragon.log", tmp_out / "hubble" / "events.log"
    agent = AgentProcess("--export-filename", str(ev_path), "--hubble-export-file-path", str(fl_path))
    net = Net(agent)
    try:
        agent.start()
        net.endpoint("client", NS, app="client")
        backend = net.endpoint("backend", NS, app="backend")
        net.serve(f"{NS}/backend", "serve-tcp", "5678")
        assert net.probe(f"{NS}/client", "tcp", backend["ipv4"], "5678", "1")
        marker = f"exported-{uuid.uuid4().hex[:8]}"
        run_marked(marker)

        def flow_there() -> list[dict[str, Any]]:
            return [
                r
                for r in read_jsonl(fl_path)
                if (r.get("flow") or {}).get("IP", {}).get("destination") == backend["ipv4"]
                and r["flow"].get("l4", {}).get("TCP", {}).get("destination_port") == 5678
            ]

        flows = wait_for(flow_there, "the probe's flow in the Hubble export file")
        (ex,) = wait_for(lambda: execs_with(read_jsonl(ev_path), marker), "the exec in the Tetragon export file")
        st = export_status(agent)
    finally:
        net.close()
        agent.cleanup()
    # Tetragon's GetEventsResponse JSON
    assert set(ex) == {"process_exec", "node_name", "time"} and ex["node_name"] == "testnode"
    p = ex["process_exec"]["process"]
    assert p["binary"] == "/usr/bin/dash" or p["binary"].endswith("sh")
    assert p["arguments"] == f'-c ": {marker}"' and p["pid"] > 0 and p["exec_id"] and p["start_time"]
    assert ex["process_exec"]["parent"]["pid"] > 0
    # Hubble's GetFlowsResponse JSON (what `hubble observe -o json` and Cilium's exporter write)
    r = flows[0]
    assert set(r) == {"flow", "node_name", "time"} and r["node_name"] == "testnode"
    f = r["flow"]
    assert f["verdict"] == "FORWARDED" and f["source"]["pod_name"] == "client" and f["destination"]["namespace"] == NS
    assert f["time"] and f["Type"] == "L3_L4"
    # status counts what was written
    assert st["events"]["exported"] > 0 and st["events"]["file"]["path"] == str(ev_path)
    assert st["flows"]["exported"] > 0 and st["flows"]["file"]["write_errors"] == 0


def test_rotation_keeps_max_backups_gzipped(tmp_out: Path) -> None:
    ev_path = tmp_out / "ev.log"
    with AgentProcess(
        "--no-network",
        "--export-filename",
        str(ev_path),
        "--export-file-max-size-mb",
        "1",
        "--export-file-max-backups",
        "2",
        "--export-file-compress",
    ) as agent:
        marker = f"rot-{uuid.uuid4().hex[:8]}"

        def rotated_enough() -> bool:
            run_marked(marker, 100)
            return export_status(agent)["events"]["file"]["rotations"] >= 4

        wait_for(rotated_enough, "four rotations", timeout=300)
        final = f"last-{uuid.uuid4().hex[:8]}"
        run_marked(final)
        wait_for(lambda: execs_with(read_jsonl(ev_path), final), "the last exec in the current file")
        st = export_status(agent)["events"]["file"]
    backups = sorted(tmp_out.glob("ev-*.log.gz"))
    assert len(backups) == 2, os.listdir(tmp_out)  # max-backups: the older ones were removed
    assert not list(tmp_out.glob("ev-*.log"))  # every rotated file compressed
    for b in backups:
        assert len(gzip.decompress(b.read_bytes())) <= 1 << 20
        assert execs_with(read_jsonl(b), marker)  # whole JSON lines, our execs among them
    assert st["compress_errors"] == 0 and st["failed_lines"] == 0


def test_filters_and_field_filters_change_the_output(tmp_out: Path) -> None:
    ev_path, fl_path = tmp_out / "ev.log", tmp_out / "fl.log"
    agent = AgentProcess(
        "--export-filename",
        str(ev_path),
        "--export-allowlist",
        '{"event_set":["PROCESS_EXEC"]}',
        "--export-denylist",
        '{"arguments_regex":["denied-[0-9a-f]+"]}',
        "--field-filters",
        '{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.arguments","action":"INCLUDE"}',
        "--hubble-export-file-path",
        str(fl_path),
        "--hubble-export-allowlist",
        '{"destination_port":["5678"]}',
        "--hubble-export-fieldmask",
        "verdict l4",
    )
    net = Net(agent)
    try:
        agent.start()
        net.endpoint("client", NS, app="client")
        backend = net.endpoint("backend", NS, app="backend")
        net.serve(f"{NS}/backend", "serve-tcp", "5678")
        assert net.probe(f"{NS}/client", "tcp", backend["ipv4"], "5678", "1")
        assert not net.probe(f"{NS}/client", "tcp", backend["ipv4"], "5679", "1")  # refused: flows to 5679
        denied, allowed = f"denied-{uuid.uuid4().hex[:8]}", f"allowed-{uuid.uuid4().hex[:8]}"
        run_marked(denied)
        run_marked(allowed)
        evs = wait_for(lambda: execs_with(read_jsonl(ev_path), allowed) and read_jsonl(ev_path), "the allowed exec")
        wait_for(lambda: len(net.flows("--to-port", "5679")) > 0, "the flows to 5679 in the agent")
        wait_for(lambda: read_jsonl(fl_path), "flows in the export file")
        time.sleep(1.5)  # the flows to 5679 had as long to be written as those to 5678
        flows = read_jsonl(fl_path)
        st = export_status(agent)
    finally:
        net.close()
        agent.cleanup()
    assert all(set(e) == {"process_exec", "node_name", "time"} for e in evs)  # the allowlist: execs only
    assert not execs_with(evs, denied)  # the denylist
    (ex,) = execs_with(evs, allowed)
    assert ex["process_exec"] == {"process": {"binary": ex["process_exec"]["process"]["binary"],
                                              "arguments": f'-c ": {allowed}"'}}  # the field filter
    assert st["events"]["filtered"] > 0
    assert flows and all(set(r["flow"]) <= {"verdict", "l4"} for r in flows)  # the field mask
    assert all(r["flow"]["l4"]["TCP"]["destination_port"] == 5678 or r["flow"]["l4"]["TCP"]["source_port"] == 5678
               for r in flows if "TCP" in r["flow"].get("l4", {}))
    assert not any((r["flow"]["l4"].get("TCP") or {}).get("destination_port") == 5679 for r in flows)
    assert st["flows"]["filtered"] > 0


def test_rate_limit_writes_rate_limit_info(tmp_out: Path) -> None:
    ev_path = tmp_out / "ev.log"
    with AgentProcess(
        "--no-network",
        "--export-filename",
        str(ev_path),
        "--export-rate-limit",
        "5",
        "--export-rate-limit-report-interval",
        "1",
    ) as agent:
        run_marked(f"rl-{uuid.uuid4().hex[:8]}", 40)

        def infos() -> list[dict[str, Any]]:
            return [e for e in read_jsonl(ev_path) if "rate_limit_info" in e]

        (first, *_) = wait_for(infos, "a rate_limit_info record")
        st = export_status(agent)["events"]
        agent.stop()
        evs = read_jsonl(ev_path)
    assert set(first) == {"rate_limit_info", "node_name", "time"} and first["node_name"] == "testnode"
    dropped = sum(int(e["rate_limit_info"]["number_of_dropped_process_events"]) for e in evs if "rate_limit_info" in e)
    exported = [e for e in evs if "rate_limit_info" not in e]
    assert dropped >= st["rate_limited"] >= 40 * 2 - len(exported)  # our 40 execs and 40 exits, minus what passed
    assert len(exported) <= 5 + 5  # the bucket (5) and what a minute's rate refilled meanwhile


FULL_DISK_ONLY = '{"event_set":["PROCESS_EXEC"],"arguments_regex":["disk-full|again-"]}'


def _fill(path: Path) -> None:
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass


def test_deleted_directory_and_full_disk_are_counted_and_recovered(tmp_out: Path) -> None:
    mnt = tmp_out / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "apiary-export-test", str(mnt)], check=True)
    try:
        gone_dir = tmp_out / "gone"
        with AgentProcess(
            "--no-network",
            "--export-filename",
            str(gone_dir / "ev.log"),
        ) as a1, AgentProcess(
            # only this test's execs: the machine's other processes would fill the small tmpfs again
            "--no-network", "--export-filename", str(mnt / "ev.log"), "--export-allowlist", FULL_DISK_ONLY
        ) as a2:
            # a deleted directory
            shutil.rmtree(gone_dir)
            wait_for(
                lambda: (run_marked("while-gone", 5), export_status(a1)["events"]["file"]["failed_lines"] > 0)[1],
                "failed writes while the directory is gone",
            )
            f = export_status(a1)["events"]["file"]
            assert f["errors"].get("ENOENT", 0) > 0 and not f["healthy"] and "cannot open" in f["last_error"]
            assert not gone_dir.exists()  # not recreated by the agent
            gone_dir.mkdir()
            back = f"back-{uuid.uuid4().hex[:8]}"
            wait_for(lambda: (run_marked(back), execs_with(read_jsonl(gone_dir / "ev.log"), back))[1], "resumed")
            assert export_status(a1)["events"]["file"]["healthy"]
            # a full disk
            _fill(mnt / "filler")
            wait_for(
                lambda: (run_marked("disk-full", 5), export_status(a2)["events"]["file"]["errors"].get("ENOSPC"))[1],
                "ENOSPC counted",
            )
            f2 = export_status(a2)["events"]["file"]
            assert f2["failed_lines"] > 0 and f2["write_errors"] > 0
            assert a2.client().get("/v1/health") is not None  # the agent is up
            text = status_text(a2)
            assert "write errors" in text and "ENOSPC" in text
            assert f"events -> {mnt / 'ev.log'} (FAILING; " in text  # on the brief Export line too
            os.unlink(mnt / "filler")
            again = f"again-{uuid.uuid4().hex[:8]}"
            wait_for(lambda: (run_marked(again), execs_with(read_jsonl(mnt / "ev.log"), again))[1], "resumed")
            metrics = a2.client().http.get("/metrics").text
            assert 'apiary_export_lost_total{reason="write_failed",stream="events"}' in metrics
            assert "tetragon_events_exported_total" in metrics
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def status_text(agent: AgentProcess) -> str:
    r = agent.cli("status")
    assert r.returncode == 0, r.stderr
    return r.stdout


class _Receiver(BaseHTTPRequestHandler):
    records: list[tuple[Any, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportLogsServiceRequest.FromString(body)
        assert self.path == "/v1/logs"
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    type(self).records.append((rl.resource, rec))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def _any(v: Any) -> Any:
    """An OTLP AnyValue as Python."""
    kind = v.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: _any(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [_any(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def test_otlp_log_export_to_a_local_receiver() -> None:
    _Receiver.records = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with AgentProcess("--no-network", "--export-otlp-endpoint", url) as agent:
            marker = f"otlp-{uuid.uuid4().hex[:8]}"

            def got() -> list[tuple[Any, Any]]:
                run_marked(marker)
                return [
                    (res, r)
                    for res, r in list(_Receiver.records)
                    if marker in json.dumps(_any(r.body)) and r.event_name == "process_exec"
                ]

            res, rec = wait_for(got, "the exec as an OTLP log record")[0]
            st = export_status(agent)["otlp"]
            metrics = agent.client().http.get("/metrics").text
    finally:
        srv.shutdown()
        srv.server_close()
    body = _any(rec.body)
    assert body["process_exec"]["process"]["arguments"] == f'-c ": {marker}"' and body["node_name"] == "testnode"
    attrs = {kv.key: _any(kv.value) for kv in rec.attributes}
    assert attrs["apiary.stream"] == "events" and attrs["apiary.event_type"] == "process_exec"
    assert attrs["process.binary"] == body["process_exec"]["process"]["binary"]
    assert attrs["process.pid"] == body["process_exec"]["process"]["pid"]
    assert rec.time_unix_nano > 0
    rattrs = {kv.key: _any(kv.value) for kv in res.attributes}
    assert rattrs["service.name"] == "apiary" and rattrs["host.name"] == "testnode"
    assert st["exported"] > 0 and st["endpoint"] == url + "/v1/logs"
    assert 'apiary_export_otlp_records_total{outcome="exported"}' in metrics
