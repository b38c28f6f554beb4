"""Service / EndpointSlice YAML: what users write loads; everything else is refused by field path."""

from __future__ import annotations

import pytest

from apiary.services.models import DEFAULT_AFFINITY_TIMEOUT, PolicyError, load_services

WEB = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels:
    app.kubernetes.io/name: web
  annotations:
    service.cilium.io/lb-algorithm: maglev
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: web
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: http
      nodePort: 30080
    - name: metrics
      port: 9090
      targetPort: 9100
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
  externalTrafficPolicy: Local
  externalIPs:
    - 192.0.2.10
---
apiVersion: v1
kind: Service
metadata:
  name: dns
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  selector:
    k8s-app: kube-dns
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: 53
status:
  loadBalancer: {}
---
apiVersion: v1
kind: Service
metadata:
  name: external-db
  namespace: shop
spec:
  ports:
  - protocol: TCP
    port: 5432
    targetPort: 5432
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-db-1
  namespace: shop
  labels:
    kubernetes.io/service-name: external-db
addressType: IPv4
ports:
  - name: ''
    protocol: TCP
    port: 5432
endpoints:
  - addresses: ["10.1.2.3"]
    conditions:
      ready: true
  - addresses: ["10.1.2.4"]
    conditions:
      ready: false
      serving: true
      terminating: true
    nodeName: node-1
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_services(text)
    return e.value.messages


def _svc(spec: str, extra: str = "") -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n{extra}spec:\n{spec}"


def test_realistic_file_loads() -> None:
    services, slices = load_services(WEB)
    web, dns, ext = services
    assert (web.namespace, web.name, web.spec.type) == ("shop", "web", "NodePort")
    assert web.spec.ports is not None and web.spec.ports[0].target == "http" and web.spec.ports[1].target == 9100
    assert web.spec.ports[0].node_port == 30080 and web.spec.affinity_timeout == 600
    assert web.spec.external_traffic_policy == "Local" and web.spec.external_ips == ["192.0.2.10"]
    assert web.annotations["service.cilium.io/lb-algorithm"] == "maglev"
    assert dns.namespace == "default" and dns.spec.cluster_ip == "10.96.0.10" and dns.spec.affinity_timeout == 0
    assert ext.spec.selector is None and ext.spec.ports is not None and ext.spec.ports[0].target == 5432
    (eps,) = slices
    assert eps.service_name == "external-db" and eps.endpoints[1].conditions.terminating is True


def test_defaults() -> None:
    (svc,), _ = load_services(_svc("  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n"))
    assert svc.spec.type == "ClusterIP" and svc.spec.ports is not None and svc.spec.ports[0].protocol == "TCP"
    assert svc.spec.ports[0].target == 80 and svc.spec.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT == 10800
    assert svc.spec.internal_traffic_policy == "Cluster" and not svc.spec.publish_not_ready_addresses


def test_headless_needs_no_ports() -> None:
    (svc,), _ = load_services(_svc("  clusterIP: None\n  selector: {app: db}\n"))
    assert svc.spec.headless


def test_cluster_ips_fill_cluster_ip() -> None:
    (svc,), _ = load_services(_svc("  clusterIPs: [10.96.3.4]\n  ports: [{port: 80}]\n"))
    assert svc.spec.cluster_ip == "10.96.3.4"


@pytest.mark.parametrize(("spec", "expected"), [
    ("  type: LoadBalancer\n  ports: [{port: 80}]\n",
     "unsupported: spec.type (LoadBalancer: no load-balancer controller on one node; use NodePort or externalIPs)"),
    ("  type: ExternalName\n  externalName: db.example.com\n",
     "unsupported: spec.type (ExternalName: ExternalName services are DNS aliases; apiary has no DNS server)"),
    ("  type: Foo\n  ports: [{port: 80}]\n", "spec.type: 'Foo' is not a service type"),
    ("  ports: [{port: 80, protocol: SCTP}]\n", "unsupported: spec.ports[0].protocol (SCTP is not load-balanced"),
    ("  ports: [{port: 80, protocol: tcp}]\n", "spec.ports[0].protocol: 'tcp' is not a protocol"),
    ("  ports: [{port: 80, bogus: 1}]\n", "spec.ports[0].bogus: unknown field"),
    ("  ports: [{port: 80}]\n  selecter: {a: b}\n", "spec.selecter: unknown field"),
    ("  ports: [{port: 0}]\n", "spec.ports[0].port:"),
    ("  ports: [{port: '80'}]\n", "spec.ports[0].port: Input should be a valid integer"),
    ("  ports: [{port: true}]\n", "spec.ports[0].port: Input should be a valid integer"),
    ("  ports: [{port: 80, targetPort: true}]\n", "spec.ports[0].targetPort: True is neither a port number nor"),
    ("  ports: [{port: 80, targetPort: '8080'}]\n", "spec.ports[0].targetPort: '8080' is not a port name"),
    ("  ports: [{port: 80, targetPort: 70000}]\n", "spec.ports[0].targetPort: 70000 is not a port"),
    ("  ports: [{port: 80, targetPort: Http_1}]\n", "spec.ports[0].targetPort: 'Http_1' is not a port name"),
    ("  type: NodePort\n  ports: [{port: 80, nodePort: 8080}]\n",
     "spec.ports[0].nodePort: 8080 is outside the NodePort range 30000-32767"),
    ("  ports: [{port: 80, nodePort: 30001}]\n", "spec.ports[0].nodePort: only a NodePort service has node ports"),
    ("  ports: [{port: 80}, {port: 81}]\n", "spec.ports[0].name: required when a service has several ports"),
    ("  ports: [{name: a, port: 80}, {name: a, port: 81}]\n", "spec.ports[1].name: duplicate of spec.ports[0].name"),
    ("  ports: [{name: a, port: 80}, {name: b, port: 80}]\n", "spec.ports[1]: duplicate 80/TCP"),
    ("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n", "spec.clusterIP: '10.96.0.300' is not an IP address"),
    ("  clusterIP: fd00::1\n  ports: [{port: 80}]\n", "spec.clusterIP: IPv6 address fd00::1"),
    ("  clusterIPs: [10.96.0.5, 'fd00::5']\n  ports: [{port: 80}]\n", "unsupported: spec.clusterIPs[1] (IPv6"),
    ("  clusterIP: 10.96.0.5\n  clusterIPs: [10.96.0.6]\n  ports: [{port: 80}]\n",
     "spec.clusterIPs[0]: must equal spec.clusterIP (10.96.0.5)"),
    ("  ports: [{port: 80}]\n  externalIPs: [192.0.2.1, nope]\n", "spec.externalIPs[1]: 'nope' is not an IP address"),
    ("  ports: [{port: 80}]\n  sessionAffinity: ClientIp\n", "spec.sessionAffinity:"),
    ("  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds:"),
    ("  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n"
     "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n",
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds:"),
    ("  ports: [{port: 80}]\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}\n",
     "spec.sessionAffinityConfig: only meaningful with sessionAffinity: ClientIP"),
    ("  ports: [{port: 80}]\n  internalTrafficPolicy: local\n", "spec.internalTrafficPolicy:"),
    ("  ports: [{port: 80}]\n  externalTrafficPolicy: Nope\n", "spec.externalTrafficPolicy:"),
    ("  ports: [{port: 80}]\n  publishNotReadyAddresses: 'yes'\n", "spec.publishNotReadyAddresses:"),
    ("  ports: [{port: 80}]\n  loadBalancerSourceRanges: [10.0.0.0/8]\n",
     "unsupported: spec.loadBalancerSourceRanges (LoadBalancer services are not supported"),
    ("  ports: [{port: 80}]\n  ipFamilies: [IPv6]\n", "unsupported: spec.ipFamilies[0] (IPv6"),
    ("  ports: [{port: 80}]\n  ipFamilyPolicy: RequireDualStack\n", "unsupported: spec.ipFamilyPolicy"),
    ("  ports: [{port: 80}]\n  trafficDistribution: PreferClose\n", "unsupported: spec.trafficDistribution"),
    ("  selector: {app: x}\n", "spec.ports: required field missing"),
    ("  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n",
     "spec.clusterIP: None (headless) is only valid for type ClusterIP"),
])
def test_service_refusals(spec: str, expected: str) -> None:
    messages = _problems(_svc(spec))
    assert any(m.startswith(expected) for m in messages), messages


def test_external_name_is_refused_for_what_it_is_only() -> None:
    """An ExternalName service (no ports: Kubernetes needs none) is refused as unsupported, without a spurious
    'spec.ports: required field missing' beside it."""
    assert _problems(_svc("  type: ExternalName\n  externalName: db.example.com\n")) == [
        "unsupported: spec.type (ExternalName: ExternalName services are DNS aliases; apiary has no DNS server)",
        "unsupported: spec.externalName (ExternalName services are DNS aliases; apiary has no DNS server)"]


def test_refusals_outside_spec() -> None:
    assert _problems("apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {ports: [{port: 80}]}\n")[0] \
        .startswith("metadata.name: 'Web' is not a valid name")
    assert _problems("apiVersion: v2\nkind: Service\nmetadata: {name: w}\n") == [
        "apiVersion: 'v2': a Service is v1"]
    assert _problems("apiVersion: v1\nkind: Pod\nmetadata: {name: w}\n") == [
        "unsupported: kind (Pod: apiary's service loader takes only Service and EndpointSlice)"]
    assert _problems(_svc("  ports: [{port: 80}]\n", "status: {loadBalancer: {ingress: [{ip: 1.2.3.4}]}}\n")) == [
        "unsupported: status (status is written by the cluster; only an empty loadBalancer status is accepted)"]
    assert _problems("- 1\n") == ["a document must be a mapping, not list"]
    algo = ("apiVersion: v1\nkind: Service\n"
            "metadata: {{name: w, annotations: {{service.cilium.io/lb-algorithm: {}}}}}\n"
            "spec: {{ports: [{{port: 80}}]}}\n")
    assert _problems(algo.format("fancy")) == [
        "metadata.annotations[service.cilium.io/lb-algorithm]: 'fancy' is not a load-balancing algorithm: "
        "use random or maglev"]
    svcs, _ = load_services(algo.format("Maglev"))  # Cilium lower-cases the value
    assert svcs[0].annotations["service.cilium.io/lb-algorithm"] == "Maglev"


SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: e
  labels: {kubernetes.io/service-name: s}
"""


@pytest.mark.parametrize(("body", "expected"), [
    ("addressType: IPv6\n", "unsupported: addressType (IPv6: apiary's datapath is IPv4-only for now)"),
    ("addressType: FQDN\n", "unsupported: addressType (FQDN"),
    ("addressType: IPv5\n", "addressType:"),
    ("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true, up: true}}]\n",
     "endpoints[0].conditions.up: unknown field"),
    ("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1, bad]}]\n",
     "endpoints[0].addresses[1]: 'bad' is not an IP address"),
    ("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n",
     "endpoints[0].addresses[0]: IPv6 address in an IPv4 slice"),
    ("addressType: IPv4\nendpoints: [{addresses: []}]\n", "endpoints[0].addresses:"),
    ("addressType: IPv4\nports: [{name: a, port: 1}, {name: a, port: 2}]\n", "ports[1].name: duplicate"),
    ("addressType: IPv4\nports: [{name: a, port: 1, protocol: SCTP}]\n", "unsupported: ports[0].protocol"),
    ("addressType: IPv4\nports: [{name: a, port: 70000}]\n", "ports[0].port:"),
])
def test_slice_refusals(body: str, expected: str) -> None:
    messages = _problems(SLICE + body)
    assert any(m.startswith(expected) for m in messages), messages


def test_slice_needs_service_name_label() -> None:
    text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\n"
    assert _problems(text) == ["metadata.labels: label kubernetes.io/service-name required: it names the service "
                               "the slice belongs to"]


def test_file_refused_whole_with_every_problem() -> None:
    bad = WEB + "---\n" + _svc("  type: LoadBalancer\n  ports: [{port: 80, protocol: SCTP}]\n") \
        + "---\n" + _svc("  ports: [{port: 80}]\n")
    messages = _problems(bad)
    assert "unsupported: document[4].spec.type (LoadBalancer: no load-balancer controller on one node; use " \
           "NodePort or externalIPs)" in messages
    assert any(m.startswith("unsupported: document[4].spec.ports[0].protocol") for m in messages)
    assert "document[5].metadata.name: Service default/s is already defined in document[4]" in messages
    assert len(messages) == 3


def test_invalid_yaml_and_empty() -> None:
    assert _problems("a: [")[0].startswith("invalid YAML")
    with pytest.raises(PolicyError):
        load_services("")
