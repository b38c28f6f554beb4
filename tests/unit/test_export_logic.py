"""Export logic without an agent: filters, field filters, field masks, rate limit, rotated files, flags."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from apiary.cli.main import cli
from apiary.observe.export import fieldmask
from apiary.observe.export.pipeline import EventPipeline, FlowPipeline
from apiary.observe.export.ratelimit import RateLimiter
from apiary.observe.export.rotate import RotatingFile, backup_name
from apiary.observe.export.settings import (
    ExportSettings,
    compile_events,
    compile_flows,
    json_objects,
    parse_field_filters,
)
from apiary.observe.tetragon.allowdeny import AllowDeny


def proc(pid: int, binary: str, args: str = "", pod: dict[str, Any] | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"pid": pid, "binary": binary, "arguments": args, "exec_id": f"id{pid}"}
    if pod is not None:
        p["pod"] = pod
    return p


POD = {"namespace": "shop", "name": "cart-7d9", "pod_labels": {"app": "cart"}, "container": {"name": "main"}}
EXEC = {
    "process_exec": {
        "process": proc(10, "/usr/bin/curl", "-s http://x", POD),
        "parent": proc(9, "/bin/bash"),
        "ancestors": [proc(1, "/sbin/init")],
    },
    "node_name": "n1",
    "time": "2026-01-01T00:00:00.000000001Z",
}
EXIT = {"process_exit": {"process": proc(11, "/bin/sleep"), "parent": proc(9, "/bin/bash")}, "node_name": "n1"}
KPROBE = {
    "process_kprobe": {"process": proc(12, "/bin/cat"), "policy_name": "deny-write", "function_name": "sys_write"},
    "node_name": "n1",
}


# ---------------------------------------------------------------- Tetragon's JSON Filter
def test_json_filters_fields_and_semantics() -> None:
    def ok(f: dict[str, Any], ev: dict[str, Any]) -> bool:
        return AllowDeny([f]).matches(ev)

    assert ok({"event_set": ["PROCESS_EXEC"]}, EXEC) and not ok({"event_set": ["PROCESS_EXEC"]}, EXIT)
    assert ok({"event_set": [5]}, EXIT)  # enum numbers, as protojson accepts
    assert ok({"binary_regex": ["curl$", "wget"]}, EXEC) and not ok({"binary_regex": ["^/bin/"]}, EXEC)
    assert ok({"namespace": ["shop"]}, EXEC) and ok({"namespace": [""]}, EXIT) and not ok({"namespace": [""]}, EXEC)
    assert ok({"pod_regex": ["^cart-"]}, EXEC) and not ok({"pod_regex": ["."]}, EXIT)
    assert ok({"pid": [10]}, EXEC) and not ok({"pid": [9]}, EXEC)
    assert ok({"pid_set": [1]}, EXEC)  # an ancestor's pid
    assert ok({"arguments_regex": ["http://"]}, EXEC)
    assert ok({"parent_binary_regex": ["bash"]}, EXIT)
    assert ok({"ancestor_binary_regex": ["init"]}, EXEC) and not ok({"ancestor_binary_regex": ["init"]}, EXIT)
    assert ok({"policy_names": ["deny-write"]}, KPROBE) and not ok({"policy_names": ["deny-write"]}, EXEC)
    assert ok({"labels": ["app=cart"]}, EXEC) and not ok({"labels": ["app=cart"]}, EXIT)
    assert ok({"container_name_regex": ["^main$"]}, EXEC)
    assert ok({"namespaceRegex": ["^sh"]}, EXEC)  # camelCase keys, as protojson accepts
    assert ok({"health_check": False}, EXEC) and not ok({"health_check": True}, EXEC)
    # fields AND, values OR
    assert not ok({"event_set": ["PROCESS_EXEC"], "binary_regex": ["sleep"]}, EXEC)


def test_json_filter_allow_and_deny_lists() -> None:
    f = AllowDeny([{"event_set": ["PROCESS_EXEC", "PROCESS_KPROBE"]}], [{"namespace": [""]}])
    assert f.matches(EXEC) and not f.matches(EXIT) and not f.matches(KPROBE)  # KPROBE's process has no pod
    assert AllowDeny().matches(EXIT) and not AllowDeny()


@pytest.mark.parametrize(
    ("filt", "msg"),
    [
        ({"binary_rgex": ["x"]}, "binary_rgex: unknown Filter field"),
        ({"cel_expression": ["true"]}, "cel_expression: unsupported"),
        ({"event_set": ["PROCESS_NOPE"]}, "unknown event type 'PROCESS_NOPE'"),
        ({"binary_regex": ["("]}, "invalid regular expression"),
        ({"pid": ["1"]}, "unsigned 32-bit integer"),
        ({"namespace": "x"}, "must be a list"),
        ({"labels": ["app in (a"]}, "labels"),
    ],
)
def test_json_filter_errors_name_field(filt: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=r"--export-allowlist\[0\]") as e:
        AllowDeny([filt], names=("--export-allowlist", "--export-denylist"))
    assert msg in str(e.value)


def test_json_objects_accepts_lines_and_commas() -> None:
    assert json_objects('{"a":1}\n{"b":2}', "--x") == [{"a": 1}, {"b": 2}]
    assert json_objects('{"a":1},{"b":2}', "--x") == [{"a": 1}, {"b": 2}]
    assert json_objects("  ", "--x") == []
    with pytest.raises(ValueError, match=r"--x: invalid JSON at character 10: Expecting value"):
        json_objects('{"a":1} [', "--x")
    with pytest.raises(ValueError, match="--x: item 1 is not a JSON object"):
        json_objects("[1]", "--x")


# ---------------------------------------------------------------- field masks and field filters
def test_fieldmask_include_exclude() -> None:
    body = EXEC["process_exec"]
    tree = fieldmask.parse_paths(["process.binary", "process.pid", "ancestors.binary"], "--m")
    assert fieldmask.include(body, tree) == {
        "process": {"binary": "/usr/bin/curl", "pid": 10},
        "ancestors": [{"binary": "/sbin/init"}],
    }
    out = fieldmask.exclude(body, fieldmask.parse_paths(["parent", "process.pod.pod_labels"], "--m"))
    assert "parent" not in out and "pod_labels" not in out["process"]["pod"] and out["process"]["pid"] == 10
    assert "parent" in body and "pod_labels" in body["process"]["pod"]  # the shared event is untouched
    assert fieldmask.parse_paths(["process.execId", "process"], "--m") == {"process": {}}  # widened
    assert fieldmask.parse_paths(["process.execId", "Type", "IP.source"], "--m") == {
        "process": {"exec_id": {}},
        "Type": {},
        "IP": {"source": {}},
    }
    with pytest.raises(ValueError, match="--m: 'a..b' is not a field path"):
        fieldmask.parse_paths(["a..b"], "--m")


def test_field_filters_per_event_type_and_inverted() -> None:
    ffs = parse_field_filters(
        '{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.exec_id","action":"INCLUDE"}\n'
        '{"fields":"parent","action":"EXCLUDE","event_set":["PROCESS_EXEC"],"invert_event_set":true}'
    )
    rules = compile_events(ExportSettings())
    pipe = EventPipeline(type(rules)(rules.filter, ffs), None, "n1")
    e, x = pipe.process([EXEC, EXIT], 0.0)
    assert e["process_exec"] == {"process": {"binary": "/usr/bin/curl", "exec_id": "id10"}}
    assert e["node_name"] == "n1" and e["time"] == EXEC["time"]  # outside the event body: kept
    assert "parent" not in x["process_exit"] and x["process_exit"]["process"]["pid"] == 11
    with pytest.raises(ValueError, match=r"--field-filters\[0\]: action 'DROP' must be INCLUDE or EXCLUDE"):
        parse_field_filters('{"fields":"parent","action":"DROP"}')
    with pytest.raises(ValueError, match=r"--field-filters\[0\]: unknown FieldFilter field 'field'"):
        parse_field_filters('{"field":"parent"}')


# ---------------------------------------------------------------- rate limit
def test_rate_limiter_bucket_refill_and_reports() -> None:
    r = RateLimiter(3, now=0.0, interval=60.0)
    assert [r.allow(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert r.report(30.0) == 0  # not due yet
    assert r.allow(20.0)  # 20 s at 3/min refills one token
    assert not r.allow(20.0)
    assert r.report(60.0) == 3 and r.report(61.0) == 0 and r.dropped == 3
    assert [r.allow(61.0) for _ in range(3)] == [True, True, False]  # 41 s refilled 2 tokens
    assert r.report(62.0, final=True) == 1
    assert not RateLimiter(0, 0.0).allow(100.0)  # 0: nothing goes
    assert all(RateLimiter(-1, 0.0).allow(0.0) for _ in range(1000))


def test_pipeline_rate_limit_info_record() -> None:
    rules = compile_events(ExportSettings(export_rate_limit=2))
    pipe = EventPipeline(rules, RateLimiter(2, 0.0, 60.0), "n1")
    assert len(pipe.process([EXEC] * 5, 1.0)) == 2
    assert pipe.stats.rate_limited == 3
    assert pipe.rate_limit_info(2.0, 0) is None
    info = pipe.rate_limit_info(61.0, 1_700_000_000_123_456_789)
    assert info == {
        "rate_limit_info": {"number_of_dropped_process_events": "3"},
        "node_name": "n1",
        "time": "2023-11-14T22:13:20.123456789Z",
    }


# ---------------------------------------------------------------- flows
def test_flow_pipeline_filters_and_fieldmask() -> None:
    flow = {
        "flow": {"verdict": "DROPPED", "source": {"namespace": "a", "pod_name": "p", "labels": ["k8s:x=y"]}, "l4": {}},
        "node_name": "n1",
        "time": "t",
    }
    fwd = {"flow": {"verdict": "FORWARDED", "source": {"namespace": "a"}}, "node_name": "n1", "time": "t"}
    s = ExportSettings(
        hubble_export_allowlist='{"verdict":["DROPPED","FORWARDED"]}',
        hubble_export_denylist='{"verdict":["FORWARDED"]}',
        hubble_export_fieldmask=("verdict source.pod_name", "source.namespace"),
    )
    pipe = FlowPipeline(compile_flows(s))
    (out,) = pipe.process([flow, fwd], 0.0)
    assert out == {"flow": {"verdict": "DROPPED", "source": {"pod_name": "p", "namespace": "a"}}, "node_name": "n1",
                   "time": "t"}
    assert pipe.stats.filtered == 1
    with pytest.raises(ValueError, match="--hubble-export-allowlist/--hubble-export-denylist"):
        compile_flows(ExportSettings(hubble_export_allowlist='{"verdict":["NOPE"]}'))


# ---------------------------------------------------------------- rotated files
def _lines(n: int, start: int = 0, size: int = 100) -> list[bytes]:
    return [(json.dumps({"i": i, "pad": "x" * (size - 20)}) + "\n").encode() for i in range(start, start + n)]


def test_rotation_by_size_keeps_max_backups_and_whole_lines(tmp_path: Path) -> None:
    t = [1000.0]
    f = RotatingFile(str(tmp_path / "d" / "ev.log"), 1000, 2, wall=lambda: t[0])
    f.start()
    for k in range(5):
        t[0] += 1
        assert f.write_lines(_lines(9, 9 * k)) == 9
    f.close()
    backups = f.backups()
    assert len(backups) == 2 and f.stats.rotations >= 4
    assert os.path.basename(backups[0]).startswith("ev-1970-01-01T00-")
    seen = []
    for p in [*backups, f.path]:
        text = Path(p).read_text()
        assert len(text.encode()) <= 1000
        seen += [json.loads(line)["i"] for line in text.splitlines()]
    assert seen == list(range(45 - len(seen), 45))  # the newest lines, in order, none twice
    assert oct(os.stat(f.path).st_mode & 0o777) == "0o600"


def test_rotation_compresses_backups(tmp_path: Path) -> None:
    f = RotatingFile(str(tmp_path / "fl.log"), 500, 0, compress=True)
    f.start()
    f.write_lines(_lines(20))
    f.close()
    gz = f.backups()
    assert gz and all(p.endswith(".log.gz") for p in gz)
    lines = [json.loads(x) for p in gz for x in gzip.open(p).read().splitlines()]
    lines += [json.loads(x) for x in Path(f.path).read_text().splitlines()]
    assert sorted(d["i"] for d in lines) == list(range(20))


def test_rotation_interval(tmp_path: Path) -> None:
    now = [0.0]
    f = RotatingFile(str(tmp_path / "ev.log"), 1 << 20, 5, rotation_interval=10.0, clock=lambda: now[0])
    f.start()
    f.write_lines(_lines(1))
    now[0] = 11.0
    f.write_lines(_lines(1))
    assert f.stats.rotations == 1 and len(f.backups()) == 1


def test_deleted_file_and_directory_are_counted_and_recovered(tmp_path: Path) -> None:
    d = tmp_path / "out"
    f = RotatingFile(str(d / "ev.log"), 1 << 20, 5)
    f.start()
    assert f.write_lines(_lines(2)) == 2
    os.unlink(d / "ev.log")
    assert f.write_lines(_lines(3)) == 3 and f.stats.reopens == 1  # reopened: the lines are in the new file
    assert len(Path(f.path).read_text().splitlines()) == 3
    shutil.rmtree(d)
    assert f.write_lines(_lines(4)) == 0
    assert f.stats.failed_lines == 4 and f.stats.write_errors == 1 and not f.healthy
    assert f.stats.errors_by_errno == {"ENOENT": 1} and "cannot open" in f.stats.last_error
    assert not d.exists()  # never recreated behind the operator's back
    d.mkdir()
    assert f.write_lines(_lines(2)) == 2 and f.healthy
    assert len(Path(f.path).read_text().splitlines()) == 2
    f.close()


def test_backup_name_is_lumberjacks() -> None:
    assert backup_name("/var/log/tetragon.log", 1700000000.5) == "/var/log/tetragon-2023-11-14T22-13-20.500.log"


# ---------------------------------------------------------------- flags
@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--export-allowlist", '{"binary_regex": "x"}'], "--export-allowlist[0]: binary_regex: must be a list"),
        (["--export-denylist", "{oops"], "--export-denylist: invalid JSON"),
        (["--field-filters", '{"fields":"a","action":"X"}'], "--field-filters[0]: action 'X'"),
        (["--hubble-export-allowlist", '{"nope":[1]}'], "unsupported FlowFilter field 'nope'"),
        (["--hubble-export-fieldmask", "a.-b"], "--hubble-export-fieldmask: 'a.-b' is not a field path"),
        (["--export-file-perm", "999"], "--export-file-perm: '999' is not an octal file mode"),
        (["--export-otlp-endpoint", "127.0.0.1:4318"], "--export-otlp-endpoint: '127.0.0.1:4318' is not an http"),
        (["--export-otlp-traces"], "--export-otlp-traces: needs --export-otlp-endpoint"),
        (["--export-allowlist", "@/nonexistent/filters"], "--export-allowlist: cannot read /nonexistent/filters"),
    ],
)
def test_agent_refuses_bad_export_flags(args: list[str], msg: str) -> None:
    r = CliRunner().invoke(cli, ["agent", *args])
    assert r.exit_code == 2, r.output
    assert msg in r.output


# ---------------------------------------------------------------- the agent's exporter (bus subscriber)
def test_exporter_counts_a_full_queue_and_writes_what_it_holds_at_close(tmp_path: Path) -> None:
    from apiary.agent.bus import EventBus
    from apiary.agent.export import Exporter

    bus = EventBus(16, 16)
    ex = Exporter(ExportSettings(export_filename=str(tmp_path / "ev.log"), export_queue=4), "n1")
    ex.start()
    ex.attach(bus, None)
    for i in range(10):  # the loop never ran: the subscription's queue holds 4, the rest is counted
        bus.publish({"process_exec": {"process": proc(100 + i, "/bin/true")}, "node_name": "n1"})
    st = ex.status()["events"]
    assert st["queue_drops"] == 6 and bus.drops == 6
    ex.close()
    lines = [json.loads(x) for x in (tmp_path / "ev.log").read_text().splitlines()]
    assert [e["process_exec"]["process"]["pid"] for e in lines] == [100, 101, 102, 103]
    assert ex.status()["events"]["exported"] == 4 and not bus.subscribers
    ex.close()  # twice: nothing more
