"""Decoded datapath flow messages (plain data). ``apiary.sensors.network`` decodes ring-buffer records into
``FlowMsg``; ``apiary.observe.hubble.builder`` turns them into Hubble Flow records."""

from __future__ import annotations

from dataclasses import dataclass

# Cilium monitor message types (event_type.type)
MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT = 1, 4, 5

# trace observation points as the datapath reports them (event_type.sub_type of a trace)
OBS_TO_ENDPOINT, OBS_TO_PROXY, OBS_TO_STACK, OBS_FROM_ENDPOINT = 0, 1, 3, 5

# conntrack result of the packet
CT_UNKNOWN, CT_NEW, CT_ESTABLISHED, CT_REPLY, CT_RELATED = 0, 1, 2, 3, 4

# flow.Verdict numbers
VERDICT_FORWARDED, VERDICT_DROPPED, VERDICT_AUDIT = 1, 2, 4

# TCP flag bits as in the TCP header byte 13 (plus NS from byte 12)
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128


@dataclass(slots=True)
class FlowMsg:
    ktime: int  # CLOCK_MONOTONIC ns
    kind: int  # MSG_DROP / MSG_TRACE / MSG_POLICY_VERDICT
    sub_type: int  # drop reason code (drops) or observation point (traces)
    ep_id: int  # endpoint whose program saw the packet
    ifindex: int  # host-side interface of that endpoint
    egress: bool  # policy direction from that endpoint's view (True: the endpoint is sending)
    verdict: int  # VERDICT_*
    src_ip: str
    dst_ip: str
    proto: int  # IP protocol number
    sport: int  # for ICMP: the type
    dport: int  # for ICMP: the code
    tcp_flags: int
    src_identity: int
    dst_identity: int
    ct_state: int  # CT_*
    rule_id: int  # index into the compiled policy's rule table, 0 = none (default deny / no policy)
    match_type: int  # policy_match_type for policy verdicts (0 none, 1 L3-only, 2 L3-L4, 3 L4-only, 4 all)
    length: int  # packet length
