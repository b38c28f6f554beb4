"""Hubble's Observer and Tetragon's FineGuidanceSensors gRPC APIs of a real agent, driven by clients generated from
the same upstream protos (proto/, `make build`), with real connections between endpoints and real processes."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from apiary.agent import protos
from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

NS = "test-namespace"
WAIT = 120.0  # generous: the machine is shared

flow_pb2, observer_pb2, observer_grpc = protos.hubble()
tetragon_pb2, events_pb2, sensors_pb2, sensors_grpc = protos.tetragon()


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[AgentProcess, Net, Any]]:
    """An agent with a client and a backend endpoint, one TCP connection made; its Hubble stub."""
    agent = AgentProcess()
    net = Net(agent)
    channel = None
    try:
        agent.start()
        net.eps = {  # type: ignore[attr-defined]
            "client": net.endpoint("client", NS, app="client"),
            "backend": net.endpoint("backend", NS, app="backend"),
        }
        net.serve(f"{NS}/backend", "serve-tcp", "5678")
        assert _connect(net)
        channel = grpc.insecure_channel(f"unix://{agent.dir / 'hubble.sock'}")
        yield agent, net, observer_grpc.ObserverStub(channel)
    finally:
        if channel is not None:
            channel.close()
        net.close()
        agent.cleanup()


def _connect(net: Net) -> bool:
    return net.probe(f"{NS}/client", "tcp", net.eps["backend"]["ipv4"], "5678", "5")  # type: ignore[attr-defined]


def _flows(stub: Any, **req: Any) -> list[Any]:
    return [r.flow for r in stub.GetFlows(observer_pb2.GetFlowsRequest(**req), timeout=WAIT) if r.HasField("flow")]


def _to_backend(f: Any) -> bool:
    return f.destination.pod_name == "backend" and f.l4.TCP.destination_port == 5678


def _wait_flows(stub: Any, pred: Any) -> list[Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = [f for f in _flows(stub) if pred(f)]
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("no such flow")


def test_get_flows_first_last_and_the_flow_of_a_real_connection(hub) -> None:
    agent, net, stub = hub
    mine = _wait_flows(stub, _to_backend)
    f = mine[0]
    assert f.source.pod_name == "client" and f.source.namespace == NS
    assert f.IP.destination == net.eps["backend"]["ipv4"]
    assert f.verdict == flow_pb2.FORWARDED
    assert f.l4.TCP.flags.SYN
    every = _flows(stub)  # number 0, no follow: the whole ring
    assert len(every) >= len(mine)
    first = _flows(stub, number=2, first=True)
    last = _flows(stub, number=2)
    assert len(every) >= 3
    assert first == every[:2] and last == every[-2:] and first != last
    # the same flows as the HTTP API (`apiary observe -o json`), field by field (apiary's extensions aside)
    http = [json_format.ParseDict({k: v for k, v in x.items() if k != "extensions"}, flow_pb2.Flow())
            for x in net.flows(wait=0)]
    assert all(x in http for x in mine)


def test_since_and_until_pick_the_flows_of_a_time_window(hub) -> None:
    _agent, _net, stub = hub
    every = _flows(stub)
    assert len(every) >= 3
    middle = every[len(every) // 2].time
    since = _flows(stub, since=middle)
    until = _flows(stub, until=middle)
    assert since and until
    key = lambda f: (f.time.seconds, f.time.nanos)  # noqa: E731
    mid = (middle.seconds, middle.nanos)
    assert all(key(f) >= mid for f in since) and all(key(f) <= mid for f in until)
    assert {key(f) for f in since} | {key(f) for f in until} >= {key(f) for f in every}
    future = Timestamp(seconds=every[-1].time.seconds + 3600)
    assert _flows(stub, since=future) == []


def test_whitelist_and_blacklist_each_change_the_result(hub) -> None:
    _, _, stub = hub
    _wait_flows(stub, _to_backend)
    every = _flows(stub)
    to_port = _flows(stub, whitelist=[flow_pb2.FlowFilter(destination_port=["5678"])])
    assert to_port and all(f.l4.TCP.destination_port == 5678 for f in to_port)
    assert len(to_port) < len(every) or all(f.l4.TCP.destination_port == 5678 for f in every)
    none = _flows(stub, whitelist=[flow_pb2.FlowFilter(destination_port=["1"])])
    assert none == []
    no_client = _flows(stub, blacklist=[flow_pb2.FlowFilter(source_pod=[f"{NS}/client"])])
    from_client = [f for f in every if f.source.pod_name == "client" and f.source.namespace == NS]
    assert from_client
    assert len(no_client) == len(every) - len(from_client)
    assert all(f.source.pod_name != "client" for f in no_client)
    # verdict as the enum, ORed values, ANDed fields
    both = _flows(
        stub,
        whitelist=[
            flow_pb2.FlowFilter(verdict=[flow_pb2.FORWARDED, flow_pb2.DROPPED], destination_pod=[f"{NS}/backend"])
        ],
    )
    assert both and all(f.destination.pod_name == "backend" for f in both)


def test_unsupported_filter_field_and_bad_requests_are_refused(hub) -> None:
    _, _, stub = hub
    with pytest.raises(grpc.RpcError) as e:
        _flows(stub, whitelist=[flow_pb2.FlowFilter(tcp_flags=[flow_pb2.TCPFlags(SYN=True)])])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "whitelist[0]" in e.value.details() and "tcp_flags" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        _flows(stub, first=True, follow=True)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "first" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.GetAgentEvents(observer_pb2.GetAgentEventsRequest(), timeout=WAIT).next()
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "GetAgentEvents" in e.value.details()


def test_follow_sees_a_new_connection(hub) -> None:
    _, net, stub = hub
    req = observer_pb2.GetFlowsRequest(follow=True, whitelist=[flow_pb2.FlowFilter(destination_pod=[f"{NS}/backend"])])
    # connect again until the stream (subscribed asynchronously) sees one
    out = _stream_until(stub.GetFlows(req, timeout=WAIT), lambda: _connect(net), lambda r: _to_backend(r.flow))
    assert out[-1].node_name == "testnode"
    assert all(r.flow.destination.pod_name == "backend" for r in out if r.HasField("flow"))


def test_server_status_and_nodes_count_flows(hub) -> None:
    _, net, stub = hub
    _wait_flows(stub, _to_backend)
    st = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=WAIT)
    assert st.max_flows == 4095
    assert 0 < st.num_flows <= st.seen_flows
    assert st.num_flows == len(_flows(stub)) or st.num_flows == st.max_flows
    assert st.num_connected_nodes.value == 1 and st.uptime_ns > 0 and st.version
    assert _connect(net)
    deadline = time.monotonic() + WAIT
    while stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=WAIT).seen_flows <= st.seen_flows:
        assert time.monotonic() < deadline, "seen_flows did not move after a new connection"
        time.sleep(0.2)
    nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=WAIT).nodes
    assert [n.name for n in nodes] == ["testnode"]
    state = nodes[0].DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[nodes[0].state].name
    assert state == "NODE_CONNECTED"
    ns = stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=WAIT).namespaces
    assert [n.namespace for n in ns] == [NS]


# ---------------------------------------------------------------------------- Tetragon


@pytest.fixture(scope="module")
def tet() -> Iterator[tuple[AgentProcess, Any]]:
    agent = AgentProcess("--no-network")
    channel = None
    try:
        agent.start()
        channel = grpc.insecure_channel(f"unix://{agent.dir / 'tetragon.sock'}")
        yield agent, sensors_grpc.FineGuidanceSensorsStub(channel)
    finally:
        if channel is not None:
            channel.close()
        agent.cleanup()


def _events_until(stub: Any, req: Any, run: Any, want: Any) -> list[Any]:
    return _stream_until(stub.GetEvents(req, timeout=WAIT), run, want)


def _stream_until(call: Any, run: Any, want: Any) -> list[Any]:
    """Read a server stream; call ``run()`` until a response satisfying ``want`` arrives; everything received."""
    got: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for r in call:
                got.put(r)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read, daemon=True)
    t.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            run()
            try:
                while True:
                    r = got.get(timeout=1)
                    out.append(r)
                    if want(r):
                        return out
            except queue.Empty:
                pass
        raise AssertionError(f"nothing wanted in the stream; got {out[:5]}")
    finally:
        call.cancel()
        t.join(30)


@pytest.fixture
def unique_binary(tmp_path) -> Iterator[str]:
    d = f"/dev/shm/apiary-grpc-{uuid.uuid4().hex[:8]}"
    os.makedirs(d)
    path = os.path.join(d, "grpc-true")
    shutil.copy2("/bin/true", path)
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_get_events_binary_regex_allow_and_event_set_deny(tet, unique_binary) -> None:
    _, stub = tet
    pids: list[int] = []

    def run() -> None:
        p = subprocess.Popen([unique_binary, "arg1"])
        pids.append(p.pid)
        p.wait()

    allow = [events_pb2.Filter(binary_regex=[f"{os.path.basename(os.path.dirname(unique_binary))}/grpc-t.ue$"])]
    out = _events_until(
        stub,
        events_pb2.GetEventsRequest(allow_list=allow),
        run,
        lambda r: r.HasField("process_exec") and r.process_exec.process.pid.value in pids,
    )
    ex = out[-1].process_exec
    assert ex.process.binary == unique_binary and ex.process.arguments == "arg1"
    assert ex.process.exec_id and ex.parent.pid.value == os.getpid()
    assert out[-1].node_name == "testnode"
    assert all(r.WhichOneof("event") in ("process_exec", "process_exit", "rate_limit_info") for r in out)
    assert all(getattr(r, r.WhichOneof("event")).process.binary == unique_binary for r in out
               if r.WhichOneof("event") != "rate_limit_info")
    # the same allow list, execs denied: the first of our events is an exit
    out = _events_until(
        stub,
        events_pb2.GetEventsRequest(
            allow_list=allow, deny_list=[events_pb2.Filter(event_set=[events_pb2.PROCESS_EXEC])]
        ),
        run,
        lambda r: r.HasField("process_exit") and r.process_exit.process.pid.value in pids,
    )
    assert not any(r.HasField("process_exec") for r in out)


def test_get_events_refuses_what_it_cannot_filter(tet) -> None:
    _, stub = tet
    for flt, field in ((events_pb2.Filter(cel_expression=["true"]), "allow_list[0].cel_expression"),
                       (events_pb2.Filter(binary_regex=["("]), "allow_list[0].binary_regex[0]")):
        with pytest.raises(grpc.RpcError) as e:
            next(iter(stub.GetEvents(events_pb2.GetEventsRequest(allow_list=[flt]), timeout=WAIT)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in e.value.details(), e.value.details()


POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: sys_getppid
    syscall: true
    selectors:
    - matchActions: [{{action: Post}}]
"""


def _policies(stub: Any) -> dict[str, Any]:
    listed = stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(), timeout=WAIT)
    return {p.name: p for p in listed.policies}


def test_tracing_policy_add_list_delete_round_trip(tet) -> None:
    _, stub = tet
    name = f"grpc-{uuid.uuid4().hex[:8]}"
    stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=POLICY.format(name=name)), timeout=WAIT)
    p = _policies(stub)[name]
    assert p.state == sensors_pb2.TP_STATE_ENABLED and p.mode == sensors_pb2.TP_MODE_ENFORCE
    assert [(h.section, h.hook_idx) for h in p.hook_statuses] == [("kprobes", 0)]
    assert list(p.sensors) == ["generic_kprobe"]
    # its events arrive on GetEvents, chosen by policy name
    out = _events_until(
        stub,
        events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(policy_names=[name])]),
        lambda: subprocess.run(["python3", "-c", "import os; os.getppid()"], check=True),
        lambda r: r.HasField("process_kprobe"),
    )
    kp = out[-1].process_kprobe
    assert kp.policy_name == name and kp.function_name.endswith("getppid")
    with pytest.raises(grpc.RpcError) as e:
        stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=POLICY.format(name=name)), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:  # a bad field is said before the name clash, as Tetragon parses first
        stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=POLICY.format(name=name) + "  bogus: 1\n"),
                              timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bogus" in e.value.details()
    stub.ConfigureTracingPolicy(
        sensors_pb2.ConfigureTracingPolicyRequest(name=name, enable=False, mode=sensors_pb2.TP_MODE_MONITOR),
        timeout=WAIT,
    )
    p = _policies(stub)[name]
    assert p.state == sensors_pb2.TP_STATE_DISABLED and p.mode == sensors_pb2.TP_MODE_MONITOR
    stub.DeleteTracingPolicy(sensors_pb2.DeleteTracingPolicyRequest(name=name), timeout=WAIT)
    names = [p.name for p in stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(), timeout=WAIT).policies]
    assert name not in names
    with pytest.raises(grpc.RpcError) as e:
        stub.DeleteTracingPolicy(sensors_pb2.DeleteTracingPolicyRequest(name=name), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=POLICY.format(name=name) + "  bogus: 1\n"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bogus" in e.value.details()
    assert name not in [p.name for p in stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest()).policies]


KILL_COPY = POLICY.replace("    - matchActions: [{{action: Post}}]\n",
                           '    - matchBinaries: [{{operator: In, values: ["{binary}"]}}]\n'
                           "      matchActions: [{{action: Sigkill}}]\n")


def test_list_counts_kills_as_signals_and_held_kills_as_monitor_signals(tet, tmp_path: Any) -> None:
    _, stub = tet
    name = f"grpc-kill-{uuid.uuid4().hex[:8]}"
    victim = tmp_path / "getppid-victim"  # a copy of dash (it calls getppid() for $PPID): only it is killed
    shutil.copy2("/usr/bin/dash", victim)
    stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=KILL_COPY.format(name=name, binary=victim)),
                          timeout=WAIT)
    try:
        run = [str(victim), "-c", "exit 0"]
        assert subprocess.run(run, timeout=60).returncode == -signal.SIGKILL
        monitor = sensors_pb2.ConfigureTracingPolicyRequest(name=name, mode=sensors_pb2.TP_MODE_MONITOR)
        stub.ConfigureTracingPolicy(monitor, timeout=WAIT)
        assert subprocess.run(run, timeout=60).returncode == 0  # monitor: would kill
        c = _policies(stub)[name].stats.action_counters
        assert (c.signal, c.monitor_signal) == (1, 1) and c.post >= 2, c
    finally:
        stub.DeleteTracingPolicy(sensors_pb2.DeleteTracingPolicyRequest(name=name), timeout=WAIT)


def test_health_version_and_unimplemented(tet) -> None:
    _, stub = tet
    h = stub.GetHealth(tetragon_pb2.GetHealthStatusRequest(), timeout=WAIT).health_status
    assert [(x.event, x.status) for x in h] == [
        (tetragon_pb2.HEALTH_STATUS_TYPE_STATUS, tetragon_pb2.HEALTH_STATUS_RUNNING)
    ]
    from apiary import __version__

    assert stub.GetVersion(sensors_pb2.GetVersionRequest(), timeout=WAIT).version == __version__
    with pytest.raises(grpc.RpcError) as e:
        stub.RuntimeHook(tetragon_pb2.RuntimeHookRequest(), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "RuntimeHook" in e.value.details() and "GetEvents" in e.value.details()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_loopback_tcp_addresses_and_a_killed_agents_stale_sockets() -> None:
    hp, tp = _free_port(), _free_port()
    agent = AgentProcess(
        "--no-network", "--hubble-listen-address", f"127.0.0.1:{hp}", "--tetragon-server-address", f"localhost:{tp}"
    )
    try:
        agent.start()
        log = agent.log()
        assert f"Hubble Observer gRPC API on unix socket {agent.dir / 'hubble.sock'}, TCP 127.0.0.1:{hp}" in log, log
        assert f"Tetragon FineGuidanceSensors gRPC API on TCP localhost:{tp}" in log, log
        assert not (agent.dir / "tetragon.sock").exists()
        assert (agent.dir / "hubble.sock").stat().st_mode & 0o777 == 0o600
        for target in (f"127.0.0.1:{hp}", f"unix://{agent.dir / 'hubble.sock'}"):
            with grpc.insecure_channel(target) as ch:
                st = observer_grpc.ObserverStub(ch).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=WAIT)
                assert st.max_flows == 0 and st.num_connected_nodes.value == 1
                with pytest.raises(grpc.RpcError) as e:  # --no-network: no flows, and it says why
                    _flows(observer_grpc.ObserverStub(ch))
                assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--no-network" in e.value.details()
        with grpc.insecure_channel(f"localhost:{tp}") as ch:
            stub = sensors_grpc.FineGuidanceSensorsStub(ch)
            assert stub.GetVersion(sensors_pb2.GetVersionRequest(), timeout=WAIT).version
        agent.stop(signal.SIGKILL)  # leaves hubble.sock behind
        assert (agent.dir / "hubble.sock").exists()
        agent.start()  # the stale socket is replaced
        with grpc.insecure_channel(f"unix://{agent.dir / 'hubble.sock'}") as ch:
            observer_grpc.ObserverStub(ch).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=WAIT)
        agent.stop()
        assert not (agent.dir / "hubble.sock").exists()  # a clean stop removes its sockets
    finally:
        agent.cleanup()
    # refused before anything starts: a non-loopback address
    r = agent.cli("agent", "--hubble-listen-address", "0.0.0.0:4245", "--state-dir", str(agent.dir / "x"))
    assert r.returncode == 2 and "--hubble-listen-address '0.0.0.0:4245': only loopback" in r.stderr, r.stderr
