"""Feed crafted packets to the endpoint TC programs with BPF_PROG_TEST_RUN (no namespaces, no links).

The lxc object is loaded through :class:`apiary.sensors.network.sensor.Datapath`, its maps written from
:func:`apiary.policy.compile.compile_policies` output exactly as the agent writes them. BPF_PROG_TEST_RUN
runs a TC program with ``skb->ifindex`` of the loopback device, so the endpoint under test is registered
under ifindex 1; the other endpoints exist only as ipcache entries (their addresses and identities).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from apiary.observe.hubble.raw import FlowMsg
from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.identity import IdentityAllocator, endpoint_labels
from apiary.policy.load import load_policies
from apiary.policy.types import CompiledPolicy
from apiary.sensors.network import abi
from apiary.sensors.network.endpoints import Endpoint
from apiary.sensors.network.sensor import Datapath

LO_IFINDEX = 1
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_ETH = b"\x02" * 6 + b"\x04" * 6


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ipv4_frame(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    """Ethernet + IPv4 (checksummed) + ``l4``, padded to the 60-byte minimum of a real frame."""
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    frame = _ETH + b"\x08\x00" + ip + l4
    return frame + b"\0" * max(0, 60 - len(frame))


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    return ipv4_frame(src, dst, socket.IPPROTO_TCP, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags,
                                                                 65535, 0, 0))


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytes:
    return ipv4_frame(src, dst, socket.IPPROTO_UDP, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def icmp_packet(src: str, dst: str, icmp_type: int, code: int = 0, ident: int = 1, seq: int = 1) -> bytes:
    body = struct.pack("!BBHHH", icmp_type, code, 0, ident, seq)
    body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
    return ipv4_frame(src, dst, socket.IPPROTO_ICMP, body)


@dataclass
class Peer:
    name: str
    namespace: str
    labels: dict[str, str]
    ipv4: str
    ep_id: int


class ProgRun:
    """The lxc programs with one endpoint under test (``subject``) and its peers known by address."""

    def __init__(self, subject: Peer, peers: Sequence[Peer] = ()) -> None:
        self.subject = subject
        self.peers = list(peers)
        self.allocator = IdentityAllocator(None)
        self.dp = Datapath(ringbuf_bytes=1 << 20, policy_max=16384, ct_max=4096)
        self.dp.load()
        self.endpoint = Endpoint(subject.ep_id, subject.name, subject.namespace, subject.labels, subject.ipv4,
                                 "", "", LO_IFINDEX, "")
        self.compiled: CompiledPolicy | None = None

    def close(self) -> None:
        self.dp.close(detach=False)

    def __enter__(self) -> ProgRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def identity(self, p: Peer) -> int:
        ident = self.allocator.lookup(endpoint_labels(p.labels, p.namespace))
        assert ident is not None, f"{p.name} has no identity yet (apply first)"
        return ident

    def apply(
        self, yaml_text: str = "", *, enforcement: str = "default", audit: bool = False, clear_ct: bool = True
    ) -> CompiledPolicy:
        """Compile the policies for the subject and its peers and write the maps as the agent does.
        ``clear_ct``: forget every tracked connection (and pending flow records) as well."""
        policies = load_policies(yaml_text) if yaml_text.strip() else []
        specs = [EndpointSpec(p.ep_id, p.name, p.namespace, p.labels, p.ipv4) for p in [self.subject, *self.peers]]
        compiled = compile_policies(policies, specs, enforcement=enforcement, audit=audit,  # type: ignore[arg-type]
                                    allocator=self.allocator)
        self.dp.audit = audit
        self.dp.sync(compiled, {self.subject.ep_id: self.endpoint}, {self.subject.ep_id: self.identity(self.subject)})
        self.compiled = compiled
        if clear_ct:
            self.ct_clear()
            self.flows()
        return compiled

    def ct_clear(self) -> None:
        for k in [k for k, _ in self.dp.ct_map.items()]:
            self.dp.ct_map.delete(k)

    def run(self, frame: bytes, egress: bool) -> tuple[int, list[FlowMsg]]:
        """One packet: ``egress`` sent by the subject (from_container), else sent to it (to_container).
        Returns the TC verdict and the flow records the packet produced."""
        assert self.dp.obj
        prog = self.dp.obj.program("from_container" if egress else "to_container")
        self.flows()
        ret, _, _ = prog.test_run(frame)
        return ret, self.flows()

    def flows(self) -> list[FlowMsg]:
        out: list[FlowMsg] = []
        assert self.dp.ring
        self.dp.ring.consume(lambda b: out.append(abi.decode_flow(b)))
        return out
