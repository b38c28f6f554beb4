"""Agent configuration with embedded defaults."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apiary.observe.export.settings import ExportSettings

if TYPE_CHECKING:
    from apiary.policy.compile import Enforcement

DEFAULT_SOCKET = "/run/apiary/apiary.sock"


def default_socket() -> str:
    return os.environ.get("APIARY_SOCKET", DEFAULT_SOCKET)


@dataclass
class AgentConfig:
    socket_path: str = field(default_factory=default_socket)
    state_dir: str = "/var/lib/apiary"
    pin_root: str = "/sys/fs/bpf/apiary"
    node_name: str = field(default_factory=socket.gethostname)
    ringbuf_bytes: int = 8 << 20
    process_cache_size: int = 65536
    event_history: int = 4096  # recent events kept for `apiary events --since`
    client_queue: int = 65536  # events buffered per streaming client before it counts drops
    drain_interval: float = 0.05  # seconds between ring drains when the kernel does not wake us
    # BPF_ENABLE_STATS while the agent runs (run count / time per program): two clock reads on every BPF program
    # run on the node, so off unless asked for (--bpf-stats)
    bpf_stats: bool = False
    mount_fs: bool = True  # mount bpffs/tracefs when missing
    tracing: bool = True  # TracingPolicy sensor
    # API transport
    api_max_connections: int = 256  # open API connections; past it idle ones are closed (busy: 503)
    api_idle_timeout: float = 30.0  # seconds a connection may wait for (or between) requests
    api_request_timeout: float = 120.0  # seconds a request may wait for the control-plane worker (then 503)
    agent_exemption: bool = True  # the agent's own process is exempt from Sigkill/Signal/Override/DenyConnect
    restore_tracing: bool = True  # re-apply stored tracing policies at start (False: load them disabled)
    keep_sensors_on_exit: bool = False  # Tetragon's flag: a clean stop leaves process/tracing sensors pinned
    # network
    network: bool = True
    pod_cidr: str = "10.200.0.0/16"
    instance: str = "default"  # tag in kernel object names (netns, cgroups), unique per agent on a node
    enable_policy: Enforcement = "default"  # default | always | never (Cilium's --enable-policy)
    policy_audit_mode: bool = False
    policy_map_size: int = 65536
    tofqdns_min_ttl: int = 0  # Cilium's --tofqdns-min-ttl: seconds a learned IP stays allowed at least
    tofqdns_reject_response_code: str = "refused"  # Cilium's --tofqdns-dns-reject-response-code: refused|nameError
    flow_buffer: int = 4095  # flows kept for `apiary observe --last` (Hubble's default ring size)
    # XDP prefilter (Cilium's --prefilter-device / --prefilter-mode): devices attached at start
    prefilter_devices: tuple[str, ...] = ()
    prefilter_mode: str = "auto"  # auto (native where the driver has it, else generic) | native | generic
    prefilter_map_size: int = 16384  # entries of each of the four deny maps
    # services (kube-proxy replacement: socket LB)
    service_cidr: str = "10.96.0.0/16"  # ClusterIPs are allocated here; routed unreachable while the agent runs
    lb_algorithm: str = "random"  # random | maglev (Cilium's --bpf-lb-algorithm); per service by annotation
    maglev_table_size: int = 16381  # Cilium's --bpf-lb-maglev-table-size (a prime of its list)
    devices: tuple[str, ...] = ()  # node devices with the NodePort/ExternalIP TC path (Cilium's --devices)
    lb_map_size: int = 65536  # entries of the service, backend and reverse-NAT maps (Cilium's --bpf-lb-map-max)
    # Prometheus: (host, port) of --metrics-addr (None: only the unix-socket API's /metrics), Hubble's metric list
    metrics_addr: tuple[str, int] | None = None
    hubble_metrics: tuple[str, ...] = ("flow", "drop", "tcp", "port-distribution", "policy")
    metrics_label_filter: str = "namespace,workload,pod,binary"  # Tetragon's --metrics-label-filter (default all)
    export: ExportSettings = field(default_factory=ExportSettings)  # event/flow export (Tetragon's, Hubble's flags)
    # Hubble's and Tetragon's gRPC APIs ("": a socket next to socket_path: hubble.sock, tetragon.sock)
    hubble_socket_path: str = ""  # Cilium's --hubble-socket-path
    hubble_listen_address: str = ""  # Cilium's --hubble-listen-address: an extra loopback HOST:PORT
    tetragon_server_address: str = ""  # Tetragon's --server-address: unix:///PATH or a loopback HOST:PORT
