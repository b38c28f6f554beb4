"""The connectivity test's selection (cilium-cli's --test) and report lines."""

from __future__ import annotations

import pytest

from apiary.connectivity.scenarios import (
    DNS_MISSING,
    L7_MISSING,
    SCENARIOS,
    Action,
    Result,
    SelectionError,
    dns_missing,
    l7_missing,
    select,
    summary,
)

NAMES = [s.name for s in SCENARIOS]


def names(*patterns: str) -> list[str]:
    return [s.name for s in select(patterns)]


def test_no_pattern_selects_all_in_table_order() -> None:
    assert names() == NAMES


def test_include_exclude_and_comma_lists() -> None:
    assert names("pod-to") == ["pod-to-pod", "pod-to-host", "pod-to-service"]
    assert names("pod-to", "!service") == ["pod-to-pod", "pod-to-host"]
    assert names("!pod-to,!l7") == [n for n in NAMES if not n.startswith("pod-to") and n != "l7-http"]
    assert names("^dns$|^prefilter$") == ["prefilter", "dns"]


@pytest.mark.parametrize("bad, why", [("nope", "matches no scenario"), ("!nope", "matches no scenario"),
                                      ("(", "not a regular expression"), ("!.", "selects no scenario")])
def test_bad_patterns_are_refused_with_the_pattern(bad: str, why: str) -> None:
    with pytest.raises(SelectionError, match=why) as ei:
        select((bad,))
    assert repr(bad) in str(ei.value)


def test_summary_all_good_and_failures() -> None:
    s = {x.name: x for x in SCENARIOS}
    ok = Result(s["pod-to-pod"], [Action("a", True)])
    skip = Result(s["dns"], skipped="L7 proxy not available in this agent")
    assert summary([ok, skip]) == ["✅ All 1 tests (1 actions) successful, 1 tests skipped, 0 scenarios skipped."]
    # the tests --test left out are skipped tests too, as cilium-cli counts them
    assert summary([ok], deselected=3) == [
        "✅ All 1 tests (1 actions) successful, 3 tests skipped, 0 scenarios skipped."]
    assert skip.line() == "⏭️  [dns] skipped: L7 proxy not available in this agent"
    bad = Result(s["allow-l3-l4"], [Action("c -> e:8080", True), Action("c -> e:8081", False, "connection succeeded")])
    err = Result(s["pod-to-service"], error="the agent refused a step: x")
    assert bad.line() == "❌ [allow-l3-l4] c -> e:8081: connection succeeded" and not bad.ok
    assert summary([ok, bad, err, skip]) == [
        "❌ 2/3 tests failed (2/3 actions), 1 tests skipped, 0 scenarios skipped:",
        "Test [allow-l3-l4]:",
        "  ❌ c -> e:8081: connection succeeded",
        "Test [pod-to-service]:",
        "  ❌ the agent refused a step: x",
    ]
    assert bad.as_dict()["result"] == "failure" and bad.as_dict()["reason"] == "c -> e:8081: connection succeeded"


def test_l7_missing_reads_the_status_the_agent_reports() -> None:
    up = {"network": {"l7_proxy": {"pid": 10, "alive": True, "port": 4000, "restarts": 0}}}
    assert l7_missing(up) == ""
    down = {"network": {"l7_proxy": {"pid": None, "alive": False, "restarts": 2}}}
    assert l7_missing(down).startswith(L7_MISSING) and "down (restarts 2" in l7_missing(down)
    assert "haproxy not installed" in l7_missing({"network": {"l7_proxy": None}})
    assert "no network half" in l7_missing({"network": None})
    assert l7_missing({"l7": True}).startswith(L7_MISSING)  # only the real status counts


def test_dns_missing_reads_the_dns_proxy_the_agent_reports() -> None:
    assert dns_missing({"network": {"dns_proxy": {"port": 4001, "queries": 0}}}) == ""
    assert dns_missing({"network": {"dns_proxy": None}}).startswith(DNS_MISSING)
    assert "haproxy not installed" in dns_missing({"network": {"l7_proxy": None, "dns_proxy": None}})
    assert "no network half" in dns_missing({"network": None})
    assert dns_missing({"dns": True}).startswith(DNS_MISSING)  # only the real status counts
