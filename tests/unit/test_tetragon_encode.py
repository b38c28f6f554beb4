from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from apiary.observe.clock import KtimeClock, format_rfc3339_ns, parse_rfc3339_ns
from apiary.observe.process import Process, ProcessCache
from apiary.observe.raw import EXEC_F_CLONE, EXEC_F_PROCFS, EXEC_F_REEXEC, ExecMsg, ExitMsg
from apiary.observe.tetragon.compact import COMPACT_FORMATTERS, compact, head, process_info, with_timestamp
from apiary.observe.tetragon.events import exec_event, exit_event, process_json, signal_name

SAMPLES = Path(os.environ.get("APIARY_CONFORMANCE", "/work/shared/conformance")) / "events" / "tetragon"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
XWING = {"namespace": "default", "name": "xwing"}


def need_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"conformance samples not found at {SAMPLES}")


def load(name: str) -> dict[str, Any]:
    need_samples()
    return json.loads((SAMPLES / name).read_text())


def msg(
    pid: int,
    ktime: int,
    ppid: int,
    pktime: int,
    binary: str,
    argv: list[str],
    flags: int = EXEC_F_CLONE,
    cwd: str = "/",
    auid: int = 4294967295,
) -> ExecMsg:
    return ExecMsg(ktime, pid, pid, ppid, pktime, flags, 0, 0, 0, 0, auid, 7, binary, cwd, argv)


def offset_for(wall: str, ktime: int) -> int:
    return parse_rfc3339_ns(wall) - ktime


# --- clock ---------------------------------------------------------------------------------------


def test_clock_formats_and_resyncs() -> None:
    c = KtimeClock(offset_for("2023-10-06T22:03:57.700327580Z", 13548674321373))
    assert c.to_rfc3339(13548674321373) == "2023-10-06T22:03:57.700327580Z"
    assert c.to_rfc3339(13548674321373 - 700327580) == "2023-10-06T22:03:57.000000000Z"
    assert format_rfc3339_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert parse_rfc3339_ns("2022-05-11T14:54:45.615+02:00") == parse_rfc3339_ns("2022-05-11T12:54:45.615Z")
    assert parse_rfc3339_ns("2022-05-11T12:54:45Z") % 10**9 == 0
    with pytest.raises(ValueError):
        parse_rfc3339_ns("2022-05-11 noon")
    live = KtimeClock()
    assert abs(live.wall_ns(time.monotonic_ns()) - time.time_ns()) < 50_000_000
    live.offset_ns = 0
    assert abs(live.resync() - (time.time_ns() - time.monotonic_ns())) < 50_000_000


# --- JSON ----------------------------------------------------------------------------------------


def concepts_chain() -> tuple[ProcessCache, Process, Process]:
    """The docs-concepts-events sample: bash -c "curl ..." re-exec'ing into curl."""
    node = "gke-john-632-default-pool-7041cac0-9s95"
    c = ProcessCache(node, KtimeClock(offset_for("2023-10-06T22:03:57.700327580Z", 13548674321373)))
    c.on_exec(msg(52689, 13548645245839, 0, 0, "/bin/sh", ["sh"], flags=EXEC_F_PROCFS))
    bash = c.on_exec(
        msg(52699, 13548670883299, 52689, 13548645245839, "/bin/bash",
            ["/bin/bash", "-c", "curl https://ebpf.io/applications/#tetragon"])
    )  # fmt: skip
    curl = c.on_exec(
        msg(52699, 13548674321373, 52699, 13548670883299, "/usr/bin/curl",
            ["curl", "https://ebpf.io/applications/#tetragon"], flags=EXEC_F_REEXEC)
    )  # fmt: skip
    for p in (bash, curl):
        p.pod = {"namespace": "default", "name": "xwing"}
    return c, bash, curl


def test_process_json_matches_docs_sample() -> None:
    c, bash, curl = concepts_chain()
    sample = load("docs-concepts-events-1-process_exec.json")["process_exec"]
    got = process_json(curl)
    want = sample["process"]
    for k in ("exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "start_time", "auid",
              "parent_exec_id", "tid"):  # fmt: skip
        assert got[k] == want[k], k
    got_parent = process_json(c.parent(curl))
    want_parent = sample["parent"]
    for k in ("exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "auid", "parent_exec_id", "tid"):
        assert got_parent[k] == want_parent[k], k
    # Tetragon measures the ktime offset per event: the parent's start time differs by ~300 ns
    assert abs(parse_rfc3339_ns(got_parent["start_time"]) - parse_rfc3339_ns(want_parent["start_time"])) < 1000


def test_process_json_omits_zero_and_empty_but_keeps_wrappers() -> None:
    c = ProcessCache("n", KtimeClock(0))
    p = c.on_exec(msg(0, 1, 0, 0, "", [], flags=EXEC_F_PROCFS, cwd="", auid=0))
    d = process_json(p)
    assert d == {
        "exec_id": p.exec_id,
        "pid": 0,
        "uid": 0,
        "flags": "procFS",
        "start_time": "1970-01-01T00:00:00.000000001Z",
        "auid": 0,
        "refcnt": 1,
        "tid": 0,
    }
    c.on_exit(ExitMsg(ktime=2, pid=0, tid=0, proc_ktime=1, status=0, signal=0))
    d = process_json(p)
    assert "refcnt" not in d and "pod" not in d and "parent_exec_id" not in d
    creds = process_json(p, credentials=True)["process_credentials"]
    assert creds == {"uid": 0, "gid": 0, "euid": 0, "egid": 0}


def _key_types(objs: list[dict[str, Any]]) -> dict[str, set[type]]:
    out: dict[str, set[type]] = {}
    for o in objs:
        for k, v in o.items():
            out.setdefault(k, set()).add(type(v))
    return out


def test_json_keys_subset_of_real_tetragon() -> None:
    need_samples()
    real: dict[str, list[dict[str, Any]]] = {"process_exec": [], "process_exit": []}
    procs: list[dict[str, Any]] = []
    tops: list[dict[str, Any]] = []
    files = [json.loads(f.read_text()) for f in SAMPLES.glob("*.json")]
    files += [json.loads(ln) for ln in (SAMPLES / "testdata-events.jsonl").read_text().splitlines() if ln]
    for ev in files:
        for kind in real:
            if kind in ev:
                tops.append(ev)
                real[kind].append(ev[kind])
                procs += [ev[kind][r] for r in ("process", "parent") if r in ev[kind]]
    assert real["process_exec"] and real["process_exit"]
    proc_types, top_types = _key_types(procs), _key_types(tops)
    # proto fields no upstream sample happens to show (FORMATS.md 4.5 event bodies)
    proto_only = {"process_exec": {"ancestors": list}, "process_exit": {"signal": str, "status": int,
                  "time": str, "ancestors": list}}  # fmt: skip

    c, bash, curl = concepts_chain()
    c.on_exit(ExitMsg(ktime=13548674321373 + 5, pid=52699, tid=52699, proc_ktime=13548674321373, status=3,
                      signal=9))  # fmt: skip
    anc = c.ancestors(curl)
    assert anc
    t = c.clock.to_rfc3339(13548674321373 + 5)
    events = [exec_event(curl, bash, anc, c.node, t), exit_event(curl, bash, anc, c.node, t, 3, 9)]
    for ev in events:
        assert set(ev) <= set(top_types)
        for k, v in ev.items():
            if k in top_types and not isinstance(v, dict):
                assert type(v) in top_types[k], k
        kind = next(k for k in ev if k.startswith("process_"))
        body_types = _key_types(real[kind])
        for k, v in ev[kind].items():
            allowed = body_types.get(k) or {proto_only[kind][k]}
            assert type(v) in allowed, (kind, k)
        for p in [ev[kind]["process"], ev[kind]["parent"], *ev[kind].get("ancestors", [])]:
            assert set(p) <= set(proc_types), set(p) - set(proc_types)
            for k, v in p.items():
                assert type(v) in proc_types[k], k


def test_exec_and_exit_event_shape() -> None:
    c, bash, curl = concepts_chain()
    ev = exec_event(curl, None, [], c.node, "2023-10-06T22:03:57.700326678Z")
    assert list(ev) == ["process_exec", "node_name", "time"]
    assert list(ev["process_exec"]) == ["process"]
    c.on_exit(ExitMsg(ktime=1, pid=52699, tid=52699, proc_ktime=13548674321373, status=0, signal=9))
    ex = exit_event(curl, bash, c.ancestors(curl), c.node, "T", status=0, signal=9)
    body = ex["process_exit"]
    assert body["signal"] == "SIGKILL"
    assert "status" not in body
    assert list(body) == ["process", "parent", "signal", "time", "ancestors"]
    assert "refcnt" not in body["process"]
    ok = exit_event(curl, bash, [], c.node, "T", status=0, signal=0)["process_exit"]
    assert "signal" not in ok and "status" not in ok and "ancestors" not in ok
    assert exit_event(curl, bash, [], c.node, "T", status=1, signal=0)["process_exit"]["status"] == 1
    json.dumps(ex)  # serialisable as is


def test_signal_names() -> None:
    assert signal_name(9) == "SIGKILL"
    assert signal_name(15) == "SIGTERM"
    assert signal_name(6) == "SIGABRT"
    assert signal_name(0) == ""
    assert signal_name(40) == ""  # real-time signals have no name in Go's unix.SignalName


# --- compact -------------------------------------------------------------------------------------


def doc_lines() -> set[str]:
    need_samples()
    return set((SAMPLES / "docs-compact-samples.txt").read_text().splitlines())


def _event(kind: str, node: str, pod: dict[str, str] | None, binary: str, argv: list[str],
           status: int = 0, signal: int = 0) -> dict[str, Any]:  # fmt: skip
    c = ProcessCache(node, KtimeClock(0))
    p = c.on_exec(msg(100, 1000, 0, 0, binary, argv))
    p.pod = pod
    if kind == "exec":
        return exec_event(p, None, [], node, "2022-05-11T12:54:45.615Z")
    c.on_exit(ExitMsg(ktime=2000, pid=100, tid=100, proc_ktime=1000, status=status, signal=signal))
    return exit_event(p, None, [], node, "2022-05-11T12:54:45.616Z", status, signal)


def test_compact_lines_match_docs() -> None:
    lines = doc_lines()
    cases = [
        (_event("exec", "n", XWING, "/usr/bin/curl", ["curl", "http://cilium.io"]),
         "🚀 process default/xwing /usr/bin/curl http://cilium.io"),
        (_event("exit", "n", XWING, "/usr/bin/curl", ["curl", "http://cilium.io"]),
         "💥 exit    default/xwing /usr/bin/curl http://cilium.io 0"),
        (_event("exec", "", None, "/usr/bin/cat", ["cat", "/tmp/tetragon"]),
         "🚀 process  /usr/bin/cat /tmp/tetragon"),
        (_event("exit", "", None, "/usr/bin/cat", ["cat", "/tmp/tetragon"], signal=9),
         "💥 exit     /usr/bin/cat /tmp/tetragon SIGKILL"),
        (_event("exit", "n", XWING, "/usr/bin/curl", ["curl", "https://ebpf.io/applications/#tetragon"], 60),
         "💥 exit    default/xwing /usr/bin/curl https://ebpf.io/applications/#tetragon 60"),
        (_event("exec", "n", XWING, "/bin/bash", ["bash", "-c", "cat /etc/shadow"]),
         '🚀 process default/xwing /bin/bash -c "cat /etc/shadow"'),
    ]  # fmt: skip
    for ev, want in cases:
        assert want in lines
        assert compact(ev) == want
    # without arguments Tetragon's "%s %s %s" leaves a trailing (exec) / double (exit) space; the
    # docs trimmed them
    ev = _event("exec", "n", XWING, "/bin/bash", ["bash"])
    assert compact(ev) == "🚀 process default/xwing /bin/bash "
    assert compact(ev).rstrip() in lines
    ev = _event("exit", "n", XWING, "/usr/bin/whoami", ["whoami"])
    assert compact(ev) == "💥 exit    default/xwing /usr/bin/whoami  0"
    assert compact(ev).replace("whoami  0", "whoami 0") in lines


def test_compact_uses_node_name_without_pod_and_colours() -> None:
    ev = _event("exit", "my-node", None, "/usr/bin/curl", ["curl", "cilium.io"], signal=9)
    plain = compact(ev)
    assert plain == "💥 exit    my-node /usr/bin/curl cilium.io SIGKILL"
    coloured = compact(ev, color=True)
    assert coloured != plain
    assert ANSI.sub("", coloured) == plain
    assert coloured.startswith("\x1b[34m💥 exit   \x1b[0m \x1b[32mmy-node\x1b[0m ")
    assert "\x1b[31mSIGKILL\x1b[0m" in coloured
    assert "\x1b[35m/usr/bin/curl\x1b[0m" in coloured


def test_compact_unknown_and_table_driven(monkeypatch: pytest.MonkeyPatch) -> None:
    ev = {"process_loader": {"process": {"binary": "/usr/bin/curl"}, "function_name": "x"}, "node_name": "n"}
    assert compact(ev) == "❓ process_loader n /usr/bin/curl"
    assert compact({"node_name": "n"}) == "❓ unknown"

    def kprobe(event: dict[str, Any], body: dict[str, Any], color: bool) -> str:
        info = process_info(event, body["process"], color)
        return f"{head('❓', 'syscall', color)} {info} {body['function_name']}"

    monkeypatch.setitem(COMPACT_FORMATTERS, "process_loader", kprobe)
    assert compact(ev) == "❓ syscall n /usr/bin/curl x"


def test_with_timestamp() -> None:
    ev = _event("exec", "n", XWING, "/usr/bin/curl", ["curl", "cilium.io"])
    line = compact(ev)
    assert with_timestamp(line, ev) == "2022-05-11T12:54:45.615000000Z " + line
    assert with_timestamp("x", {}) == "1970-01-01T00:00:00.000000000Z x"
