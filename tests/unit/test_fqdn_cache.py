"""The agent's toFQDNs state (pure): learned names with TTL and minimum TTL, expiry, the per-query DNS
judge, and the Hubble DNS L7 flow fields and summaries."""

from __future__ import annotations

import pytest

from apiary.agent.fqdn import DnsJudge, FqdnCache
from apiary.observe.hubble.l7 import DnsExchange, dns_json, dns_summary
from apiary.policy.types import EGRESS, PROTO_TCP, PROTO_UDP, DnsRule, PolicyKey, RuleRef


def test_min_ttl_expiry_and_shared_ips() -> None:
    c = FqdnCache(min_ttl=10)
    assert c.learn(1, "A.example.com", ("192.0.2.1",), 2, now=100.0)
    assert c.entries[(1, "a.example.com.")].ttl == 10  # raised to the minimum TTL
    assert not c.learn(2, "a.example.com.", ("192.0.2.1",), 60, now=100.0)  # same names -> IPs: no change
    assert c.names_ips() == {"a.example.com.": ("192.0.2.1",)}
    assert not c.expire(now=111.0)  # endpoint 1's entry went, endpoint 2's still holds the name
    assert [r["endpoint-id"] for r in c.rows()] == [2]
    assert c.expire(now=161.0) and c.names_ips() == {}
    with pytest.raises(ValueError, match="tofqdns-min-ttl"):
        FqdnCache(min_ttl=-1)


def test_learn_many_reports_the_names_whose_ips_changed_and_holds_tells_fresh_entries() -> None:
    c = FqdnCache()
    assert c.learn_many([(1, "a.example.com", ("192.0.2.1",), 60), (1, "b.example.com", ("192.0.2.2",), 60),
                         (2, "a.example.com", ("192.0.2.1",), 60)], now=100.0) == {"a.example.com.", "b.example.com."}
    # a repeat only refreshes (no change); a new IP for a name another endpoint also holds changes that name
    assert c.learn_many([(1, "a.example.com", ("192.0.2.1",), 60)], now=130.0) == set()
    assert c.entries[(1, "a.example.com.")].looked_up == 130.0
    assert c.learn_many([(2, "a.example.com", ("192.0.2.9",), 60), (3, "c.example.com", (), 60)],
                        now=130.0) == {"a.example.com."}
    assert c.names_ips()["a.example.com."] == ("192.0.2.1", "192.0.2.9")
    assert not c.holds(1, "A.example.com.", ("192.0.2.1",), margin=5.0)  # learned at t=130 s: long expired
    c.learn_many([(1, "d.example.com", ("192.0.2.4",), 3600)])
    assert c.holds(1, "d.example.com", ("192.0.2.4",), margin=5.0)
    assert not c.holds(1, "d.example.com", ("192.0.2.5",), margin=5.0)  # other IPs: must be learned first
    assert not c.holds(2, "d.example.com", ("192.0.2.4",), margin=5.0)  # another endpoint's entry
    assert not c.holds(1, "d.example.com", ("192.0.2.4",), margin=4000.0)  # expires too soon
    assert not c.holds(1, "d.example.com", (), margin=5.0)


def test_rows_filter_by_endpoint_and_pattern() -> None:
    c = FqdnCache()
    c.learn(1, "a.example.com", ("192.0.2.1",), 30, now=0.0)
    c.learn(2, "b.other.org", ("192.0.2.2", "192.0.2.3"), 30, now=0.0)
    assert [r["fqdn"] for r in c.rows(pattern="*.example.com")] == ["a.example.com."]
    row = c.rows(ep_id=2)[0]
    assert row["ips"] == ["192.0.2.2", "192.0.2.3"] and row["source"] == "lookup" and row["ttl"] == 30
    assert row["expiration-time"] == "1970-01-01T00:00:30Z" and row["lookup-time"] == "1970-01-01T00:00:00Z"
    # the keys of `cilium fqdn cache list -o json` (models.DNSLookup), so its JSON tooling reads ours
    assert set(row) == {"endpoint-id", "source", "fqdn", "ttl", "lookup-time", "expiration-time", "ips"}


def test_judge_uses_the_asking_endpoints_rules_for_that_resolver_and_port() -> None:
    refs = [RuleRef("", "", "", "", 0), RuleRef("p", "ns", "CiliumNetworkPolicy", "egress[0]", 1)]
    rules = (DnsRule(1, "egress[0].toPorts[0].rules.dns[0]", "a.example.com"),)
    dns = {PolicyKey(1, EGRESS, 300, PROTO_UDP, 53, 16): rules, PolicyKey(1, EGRESS, 300, PROTO_TCP, 53, 16): rules}
    judge = DnsJudge(dns, {"10.0.0.5": 1, "10.0.0.6": 2}, {"192.0.2.53/32": 300, "0.0.0.0/0": 2}, refs)
    ok, why = judge("10.0.0.5", "192.0.2.53", 53, "UDP", "a.example.com.")
    assert ok and why == "CiliumNetworkPolicy ns/p egress[0].toPorts[0].rules.dns[0]"
    ok, why = judge("10.0.0.5", "192.0.2.53", 53, "UDP", "b.example.com.")
    assert not ok and why.endswith("rules.dns (no DNS rule matched)")
    assert not judge("10.0.0.5", "192.0.2.99", 53, "UDP", "a.example.com.")[0]  # another resolver
    assert not judge("10.0.0.5", "192.0.2.53", 5353, "UDP", "a.example.com.")[0]  # another port
    assert not judge("10.0.0.6", "192.0.2.53", 53, "UDP", "a.example.com.")[0]  # another endpoint
    assert judge("10.0.0.5", "192.0.2.53", 53, "TCP", "a.example.com.")[0]
    assert judge("10.0.0.5", "192.0.2.53", 53, "UDP", "b.example.com.") == (False, why)  # remembered: the same
    assert judge.identity("192.0.2.53") == 300 and judge.identity("198.51.100.7") == 2


def test_dns_flow_fields_and_summaries() -> None:
    x = DnsExchange("10.0.0.5", 4000, "192.0.2.53", 53, "UDP", "a.example.com.", ("A",), True, "r", 0,
                    ips=("192.0.2.1", "192.0.2.2"), ttl=30, rrtypes=("A",), cnames=("c.example.com.",))
    assert dns_summary(x, False) == "DNS Query a.example.com. A"
    assert dns_summary(x, True) == ('DNS Answer "192.0.2.1,192.0.2.2" CNAMEs: "c.example.com." TTL: 30 '
                                    "(Proxy a.example.com. A)")
    assert dns_json(x, False) == {"query": "a.example.com.", "observation_source": "proxy", "qtypes": ["A"]}
    assert dns_json(x, True)["ips"] == ["192.0.2.1", "192.0.2.2"] and "rcode" not in dns_json(x, True)
    refused = DnsExchange("10.0.0.5", 4000, "192.0.2.53", 53, "UDP", "b.", ("A",), False, "r", 0, rcode=5)
    assert dns_summary(refused, True) == "DNS Answer RCode: Query Refused TTL: 0 (Proxy b. A)"
    assert dns_json(refused, True)["rcode"] == 5


def test_fqdn_filter_matches_learned_names() -> None:
    from apiary.observe.hubble.filters import FlowFilter

    flt = FlowFilter.from_args([("to-fqdn", "*.example.com")])
    assert flt.matches({"flow": {"destination_names": ["api.example.com"]}})
    assert not flt.matches({"flow": {"destination_names": ["example.org"]}})
    assert not flt.matches({"flow": {"source_names": ["api.example.com"]}})
    both = FlowFilter.from_args([("fqdn", "API.example.com.")])
    assert both.matches({"flow": {"source_names": ["api.example.com"]}})
    with pytest.raises(ValueError, match="fqdn"):
        FlowFilter.from_args([("fqdn", "a[b]")])


def test_the_cache_survives_a_restart_through_its_saved_document() -> None:
    c = FqdnCache(min_ttl=0)
    c.learn(1, "Api.Example.com", ("10.0.0.2", "10.0.0.1"), 300, now=1000.0)
    c.learn(1, "short.example.com", ("10.0.0.3",), 5, now=1000.0)
    c.learn(2, "api.example.com", ("10.0.0.9",), 300, now=1000.0)
    saved = c.dump()
    again = FqdnCache()
    # endpoint 2 is gone, short.example.com expired at 1005: neither comes back; expiry is kept, not renewed
    assert again.load(saved, endpoints={1, 3}, now=1010.0) == 1
    assert again.names_ips() == {"api.example.com.": ("10.0.0.1", "10.0.0.2")}
    assert again.rows()[0]["expiration-time"] == c.rows()[0]["expiration-time"]
    assert not again.expire(now=1299.0) and again.expire(now=1300.0)


def test_a_saved_cache_that_does_not_parse_is_an_error_naming_it() -> None:
    for bad in (b"{", b'{"entries": [{"endpoint": "x"}]}', b"[]"):
        with pytest.raises(ValueError, match="saved fqdn cache does not parse"):
            FqdnCache().load(bad, endpoints={1})
