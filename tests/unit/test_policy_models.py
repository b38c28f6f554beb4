from __future__ import annotations

import textwrap

import pytest

from apiary.policy.load import PolicyError, load_policies
from apiary.policy.models import CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy

HEAD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  namespace: ns
spec:
  endpointSelector:
    matchLabels:
      app: a
"""


def doc(body: str, head: str = HEAD) -> str:
    return head + textwrap.indent(textwrap.dedent(body), "  ")


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        load_policies(text)
    assert exc.value.problems, "a PolicyError carries its problems"
    return exc.value.messages


# (YAML, the exact message expected among the problems)
BAD = [
    (doc("ingres:\n- {}\n"), "spec.ingres: unknown field"),
    (doc("ingress:\n- fromEndpoint: [{}]\n"), "spec.ingress[0].fromEndpoint: unknown field"),
    (doc("ingress:\n- toPorts:\n  - ports:\n    - port: '70000'\n"),
     "spec.ingress[0].toPorts[0].ports[0].port: port 70000 is out of range 0-65535"),
    (doc("ingress:\n- toPorts:\n  - ports:\n    - port: 'not a port'\n"),
     "spec.ingress[0].toPorts[0].ports[0].port: unable to parse port 'not a port': not a number 0-65535 nor a port "
     "name (IANA service name)"),
    (doc("ingress:\n- toPorts:\n  - ports:\n    - {port: '90', endPort: 80}\n"),
     "spec.ingress[0].toPorts[0].ports[0].endPort: endPort 80 must not be lower than port 90"),
    (doc("egress:\n- toPorts:\n  - ports:\n    - {port: '80', protocol: HTTP}\n"),
     "spec.egress[0].toPorts[0].ports[0].protocol: invalid protocol 'HTTP' (use TCP, UDP, SCTP or ANY)"),
    (doc("egress:\n- toPorts:\n  - ports:\n" + "".join(f"    - port: '{p}'\n" for p in range(41))),
     "spec.egress[0].toPorts[0].ports: too many items: at most 40 (41 given)"),
    (doc("ingress:\n- fromEndpoints: [{}]\n  fromCIDR: [10.0.0.0/8]\n"),
     "spec.ingress[0]: combining fromEndpoints and fromCIDR is not supported yet (write separate items)"),
    (doc("egress:\n- toEntities: [world]\n  toCIDRSet: [{cidr: 10.0.0.0/8}]\n"),
     "spec.egress[0]: combining toCIDRSet and toEntities is not supported yet (write separate items)"),
    (doc("egress:\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    except: [10.1.0.0/16, 11.0.0.0/16]\n"),
     "spec.egress[0].toCIDRSet[0].except[1]: allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix "
     "11.0.0.0/16"),
    (doc("egress:\n- toCIDR: [10.0.0.0/255.0.0.0]\n"),
     "spec.egress[0].toCIDR[0]: unable to parse CIDR '10.0.0.0/255.0.0.0': the prefix length must be a number "
     "(no netmask notation)"),
    (doc("egress:\n- toCIDR: [300.1.1.1/32]\n"),
     "spec.egress[0].toCIDR[0]: unable to parse CIDR '300.1.1.1/32': '300.1.1.1/32' does not appear to be an IPv4 or "
     "IPv6 network"),
    (doc("egress:\n- toEntities: [everything]\n"),
     "spec.egress[0].toEntities[0]: Input should be 'all', 'world', 'cluster', 'cluster-mesh', 'host', 'init', "
     "'ingress', 'unmanaged', 'remote-node', 'health', 'none' or 'kube-apiserver'"),
    (doc("egress:\n- icmps:\n  - fields: [{type: 256}]\n"),
     "spec.egress[0].icmps[0].fields[0].type: ICMP type 256 is out of range 0-255"),
    (doc("egress:\n- icmps:\n  - fields: [{type: PacketTooBig}]\n"),
     "spec.egress[0].icmps[0].fields[0].type: ICMP type 'PacketTooBig' not found in IPv4 (use 0-255 or a name like "
     "EchoRequest)"),
    (doc("egress:\n- icmps:\n  - fields: [{type: 8}]\n  toPorts:\n  - ports: [{port: '80'}]\n"),
     "spec.egress[0].icmps: the icmps block may only be present without toPorts; define a separate rule to use "
     "toPorts"),
    (doc("ingress:\n- fromRequires: [{matchLabels: {env: prod}}]\n"),
     "spec.ingress[0].fromRequires: fromRequires was removed in Cilium 1.19 (the CRD allows 0 items); add the "
     "required labels to each selector instead"),
    (doc("description: nothing\n"),
     "spec: rule must have at least one of ingress, ingressDeny, egress, egressDeny"),
    (doc("nodeSelector: {}\ningress: [{}]\n"), "spec.nodeSelector: rule cannot have both endpointSelector and "
     "nodeSelector"),
    (HEAD.replace("spec:\n  endpointSelector:\n    matchLabels:\n      app: a\n", "spec:\n  nodeSelector: {}\n  "
                  "ingress: [{}]\n"),
     "spec.nodeSelector: nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy"),
    (HEAD.split("spec:")[0], "empty policy: set spec or specs"),
    (doc("ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: app, operator: Equals, values: [x]}\n"),
     'spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: "Equals" is not a valid label selector '
     "operator (use In, NotIn, Exists or DoesNotExist; operators are case-sensitive)"),
    (doc("ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: app, operator: In}\n"),
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: values must be non-empty for operator In"),
    (doc("ingressDeny:\n- toPorts:\n  - ports: [{port: '80'}]\n    rules: {http: [{}]}\n"),
     "spec.ingressDeny[0].toPorts[0].rules: unknown field"),
    (doc("enableDefaultDeny: {ingress: 'no'}\ningress: [{}]\n"),
     "spec.enableDefaultDeny.ingress: Input should be a valid boolean"),
    (HEAD.replace("cilium.io/v2", "cilium.io/v1"), "apiVersion: Input should be 'cilium.io/v2'"),
    (HEAD.replace("name: p", "name: Bad_Name") + "  ingress: [{}]\n",
     "metadata.name: 'Bad_Name' is not a valid name (lower-case letters, digits, '-' and '.')"),
    (doc("ingress:\n- toPorts:\n  - ports:\n    - {port: '0', endPort: 100}\n"),
     "spec.ingress[0].toPorts[0].ports[0].endPort: endPort needs a non-zero port (port 0 already means every port)"),
    (HEAD + "  ingress: [{}]\n  ingress: [{}]\n", "invalid YAML: duplicate key 'ingress' (line 11, column 3)"),
    ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\n",
     "unsupported: kind (Pod: apiary applies only CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy)"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m[:60] for _, m in BAD])
def test_bad_policy_is_rejected_with_field_path(text: str, message: str) -> None:
    msgs = errors(text)
    assert any(m == message or m.startswith(message) or message in m for m in msgs), msgs
    if message.startswith("spec") or message.startswith("metadata") or message.startswith("apiVersion"):
        assert message in msgs, msgs


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 15


def test_duplicate_key_error_names_the_key() -> None:
    (msg,) = errors(HEAD + "  ingress: [{}]\n  ingress: [{}]\n")
    assert msg == "invalid YAML: duplicate key 'ingress' (line 11, column 3)"


def test_all_documents_apply_or_none() -> None:
    good = doc("ingress: [{}]\n")
    bad = doc("ingress:\n- fromEntitys: [world]\n").replace("name: p", "name: q")
    msgs = errors(good + "---\n" + bad)
    assert msgs == ["document[1].spec.ingress[0].fromEntitys: unknown field"]


def test_every_problem_is_reported() -> None:
    text = doc("ingress:\n- fromEntitys: [world]\negress:\n- toPorts:\n  - ports: [{port: '99999'}]\n")
    assert errors(text) == [
        "spec.ingress[0].fromEntitys: unknown field",
        "spec.egress[0].toPorts[0].ports[0].port: port 99999 is out of range 0-65535",
    ]


def test_duplicate_policy_in_one_file() -> None:
    one = doc("ingress: [{}]\n")
    assert errors(one + "---\n" + one) == [
        "document[1].metadata.name: CiliumNetworkPolicy 'p' is already defined in document[0]"]


def test_not_yaml_and_empty() -> None:
    assert errors("a: [")[0].startswith("invalid YAML:")
    assert errors("") == ["no policy documents found"]
    assert errors("- 1\n- 2\n") == ["a policy document must be a mapping, not list"]
    assert errors("apiVersion: cilium.io/v2\n") == ["kind: required field missing"]


UNSUPPORTED = [
    (doc("egress:\n- toServices: [{k8sService: {serviceName: s, namespace: n}}]\n"), "spec.egress[0].toServices"),
    (doc("egress:\n- toGroups: [{aws: {securityGroupsIds: [sg-1]}}]\n"), "spec.egress[0].toGroups"),
    (doc("ingress:\n- fromGroups: [{aws: {securityGroupsIds: [sg-1]}}]\n"), "spec.ingress[0].fromGroups"),
    (doc("ingress:\n- fromNodes: [{}]\n"), "spec.ingress[0].fromNodes"),
    (doc("egress:\n- toNodes: [{}]\n"), "spec.egress[0].toNodes"),
    (doc("egress:\n- toCIDRSet: [{cidrGroupRef: g}]\n"), "spec.egress[0].toCIDRSet[0].cidrGroupRef"),
    (doc("egress:\n- toCIDRSet: [{cidrGroupSelector: {}}]\n"), "spec.egress[0].toCIDRSet[0].cidrGroupSelector"),
    (doc("ingress:\n- authentication: {mode: required}\n"), "spec.ingress[0].authentication"),
    (doc("ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{headerMatches: "
         "[{name: X-A, value: b, mismatch: ADD}]}]}\n"),
     "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch"),
    (doc("ingress:\n- toPorts:\n  - ports: [{port: '9092', protocol: TCP}]\n    rules: {kafka: [{topic: t}]}\n"),
     "spec.ingress[0].toPorts[0].rules.kafka"),
    (doc("egress:\n- toPorts:\n  - ports: [{port: '443', protocol: TCP}]\n    serverNames: [a.example]\n"),
     "spec.egress[0].toPorts[0].serverNames"),
    (doc("egress:\n- toPorts:\n  - ports: [{port: '443', protocol: TCP}]\n    listener: {name: l, envoyConfig: "
         "{kind: CiliumEnvoyConfig, name: c}}\n"), "spec.egress[0].toPorts[0].listener"),
    (doc("egress:\n- toPorts:\n  - ports: [{port: '443', protocol: TCP}]\n    originatingTLS: {secret: {name: s}}\n"),
     "spec.egress[0].toPorts[0].originatingTLS"),
    (doc("egress:\n- toPorts:\n  - ports: [{port: '0', protocol: gre}]\n"),
     "spec.egress[0].toPorts[0].ports[0].protocol"),
    (doc("egress:\n- toCIDR: ['2001:db8::/32']\n"), "spec.egress[0].toCIDR[0]"),
    (doc("egress:\n- toCIDRSet: [{cidr: '2001:db8::/32'}]\n"), "spec.egress[0].toCIDRSet[0].cidr"),
    (doc("egress:\n- icmps: [{fields: [{family: IPv6, type: EchoRequest}]}]\n"),
     "spec.egress[0].icmps[0].fields[0].family"),
    (doc("log: {value: audit-me}\ningress: [{}]\n"), "spec.log"),
]


@pytest.mark.parametrize(("text", "path"), UNSUPPORTED, ids=[p for _, p in UNSUPPORTED])
def test_unsupported_feature_is_named(text: str, path: str) -> None:
    msgs = errors(text)
    assert len(msgs) == 1 and msgs[0].startswith(f"unsupported: {path} ("), msgs


def test_host_policy_is_unsupported() -> None:
    text = ("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\n"
            "spec:\n  nodeSelector: {}\n  ingress: [{}]\n")
    assert errors(text) == ["unsupported: spec.nodeSelector (host policies are not enforced yet; select endpoints "
                            "with endpointSelector)"]


def test_valid_policy_is_normalised() -> None:
    (p,) = load_policies(doc("""\
        ingress:
        - toPorts:
          - ports:
            - {port: 80, protocol: tcp}
            - {port: "8080", endPort: 8090}
        egress:
        - icmps:
          - fields: [{type: EchoRequest}, {type: "0"}, {family: IPv4, type: 13}]
        enableDefaultDeny: {egress: false}
        labels: [{key: team, value: web, source: user}, "k8s:tier=1"]
        description: d
    """))
    assert isinstance(p, CiliumNetworkPolicy) and p.namespace == "ns" and p.name == "p"
    (rule,) = [r for _, r in p.rules()]
    ports = rule.ingress[0].to_ports[0].ports
    assert [(x.port, x.end_port, x.protocol) for x in ports] == [("80", None, "TCP"), ("8080", 8090, "ANY")]
    assert [f.code for f in rule.egress[0].icmps[0].fields] == [8, 0, 13]
    assert rule.default_deny(ingress=True) and not rule.default_deny(ingress=False)
    assert rule.label_strings() == ("user:team=web", "k8s:tier=1")


def test_namespace_defaults_and_cluster_scope() -> None:
    (p,) = load_policies(doc("ingress: [{}]\n").replace("  namespace: ns\n", ""), default_namespace="team-a")
    assert p.namespace == "team-a"
    ccnp = doc("ingress: [{}]\n").replace("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
    assert errors(ccnp) == ["metadata.namespace: a CiliumClusterwideNetworkPolicy is cluster-scoped and has no "
                            "namespace"]
    (c,) = load_policies(ccnp.replace("  namespace: ns\n", ""))
    assert isinstance(c, CiliumClusterwideNetworkPolicy) and c.namespace == ""


def test_specs_list_and_paths() -> None:
    text = HEAD.split("spec:")[0] + "specs:\n- endpointSelector: {}\n  ingress: [{}]\n- endpointSelector: {}\n"
    assert errors(text) == ["specs[1]: rule must have at least one of ingress, ingressDeny, egress, egressDeny"]
    text = text + "  egress:\n  - toPorts: [{ports: [{port: x-}]}]\n"
    assert errors(text)[0].startswith("specs[1].egress[0].toPorts[0].ports[0].port: unable to parse port 'x-'")


def test_explicit_empty_lists_are_valid() -> None:
    (p,) = load_policies(doc("ingress:\n- fromEndpoints: []\n  fromCIDR: []\n  fromRequires: []\n"))
    item = p.rules()[0][1].ingress[0]
    assert item.peer_fields() == {"fromEndpoints": [], "fromCIDR": []}
