"""A tiny client of apiary's Hubble and Tetragon gRPC APIs, with the modules `make build` generates.

    PYTHONPATH=src .venv/bin/python examples/grpc/client.py [/run/apiary]
"""

import sys

import grpc

from apiary.agent import protos

run = sys.argv[1] if len(sys.argv) > 1 else "/run/apiary"
flow_pb2, observer_pb2, observer_grpc = protos.hubble()
tetragon_pb2, events_pb2, sensors_pb2, sensors_grpc = protos.tetragon()

with grpc.insecure_channel(f"unix://{run}/hubble.sock") as ch:
    hubble = observer_grpc.ObserverStub(ch)
    st = hubble.ServerStatus(observer_pb2.ServerStatusRequest())
    print(f"hubble: {st.num_flows}/{st.max_flows} flows, seen {st.seen_flows}, version {st.version}")
    req = observer_pb2.GetFlowsRequest(number=3, whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.FORWARDED])])
    for r in hubble.GetFlows(req):
        f = r.flow
        print(f"  {f.source.namespace}/{f.source.pod_name} -> {f.destination.namespace}/{f.destination.pod_name}"
              f":{f.l4.TCP.destination_port} {flow_pb2.Verdict.Name(f.verdict)}")

with grpc.insecure_channel(f"unix://{run}/tetragon.sock") as ch:
    tetragon = sensors_grpc.FineGuidanceSensorsStub(ch)
    print("tetragon:", tetragon.GetVersion(sensors_pb2.GetVersionRequest()).version)
    for p in tetragon.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest()).policies:
        print(f"  policy {p.name} {sensors_pb2.TracingPolicyState.Name(p.state)}")
    req = events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(binary_regex=["/curl$"])])
    for r in tetragon.GetEvents(req):  # follows, as `tetra getevents`
        print(f"  {r.WhichOneof('event')} {r.process_exec.process.binary} {r.process_exec.process.arguments}")
        break
