"""The Hubble printers: time formats, table / dict / lost-event output; the flow ring."""

from __future__ import annotations

import pytest
from hubble_flow_helpers import T0, builder, default_deny_drop, explicit_deny_drop, syn_egress

from apiary.observe.clock import parse_rfc3339_ns
from apiary.observe.hubble.builder import lost_events_response, protojson_timestamp
from apiary.observe.hubble.printers import compact, dict_format, format_time, table
from apiary.observe.hubble.ring import FlowRing

# --- time ----------------------------------------------------------------------------------------


def test_protojson_timestamp_digits() -> None:
    base = parse_rfc3339_ns("2021-11-10T10:41:26Z")
    assert protojson_timestamp(base) == "2021-11-10T10:41:26Z"
    assert protojson_timestamp(base + 95_000_000) == "2021-11-10T10:41:26.095Z"
    assert protojson_timestamp(base + 95_357_000) == "2021-11-10T10:41:26.095357Z"
    assert protojson_timestamp(base + 95_336_300) == "2021-11-10T10:41:26.095336300Z"


def test_time_formats() -> None:
    ns = parse_rfc3339_ns("2024-01-04T03:05:09.123456789Z")
    assert format_time(ns) == "Jan  4 03:05:09.123"
    assert format_time(ns, "RFC3339") == "2024-01-04T03:05:09Z"
    assert format_time(ns, "RFC3339Milli") == "2024-01-04T03:05:09.123Z"
    assert format_time(ns, "RFC3339Micro") == "2024-01-04T03:05:09.123456Z"
    assert format_time(ns, "RFC3339Nano") == "2024-01-04T03:05:09.123456789Z"
    assert format_time(ns - 123_456_789, "RFC3339Nano") == "2024-01-04T03:05:09Z"
    assert format_time(ns, "YearMonthDay") == "2024-01-04"
    assert format_time(ns, "YearMonthDayHour") == "2024-01-04T03Z"
    assert format_time(ns, "YearMonthDayHourMinute") == "2024-01-04T03:05Z"
    assert format_time(ns, "RFC1123Z") == "Thu, 04 Jan 2024 03:05:09 +0000"
    assert format_time(None) == "N/A"
    with pytest.raises(ValueError, match="time-format"):
        format_time(ns, "Kitchen")
    r = builder().build(syn_egress())
    assert compact(r, time_format="RFC3339Milli").startswith("2024-01-04T13:23:47.852Z: ")
    assert compact(r, print_node_name=True).startswith("Jan  4 13:23:47.852 [apiary-node]: ")


# --- table / dict / lost events ------------------------------------------------------------------


def test_table_format() -> None:
    b = builder()
    rs = [b.build(syn_egress()), b.build(explicit_deny_drop())]
    lines = table(rs).splitlines()
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 3
    col = lines[0].index("SOURCE")
    assert col == len("Jan  4 13:23:47.852") + 3
    assert all(line[col:].startswith("test-namespace/frontend:42818") for line in lines[1:])
    assert lines[2].endswith("Policy denied by denylist   DROPPED     TCP Flags: SYN")
    assert "[" not in lines[2]  # no apiary suffix in the table
    assert table([]) == ""
    assert table(rs, print_node_name=True).splitlines()[0].split()[1] == "NODE"


def test_dict_format() -> None:
    b = builder()
    out = dict_format([b.build(syn_egress()), b.build(default_deny_drop())])
    blocks = out.split("\n------------\n")
    assert len(blocks) == 2
    assert blocks[0].splitlines() == [
        "  TIMESTAMP: Jan  4 13:23:47.852",
        "     SOURCE: test-namespace/frontend:42818",
        "DESTINATION: test-namespace/backend:5678",
        "       TYPE: from-endpoint",
        "    VERDICT: FORWARDED",
        "    SUMMARY: TCP Flags: SYN",
    ]
    assert "       TYPE: Policy denied" in blocks[1]


def test_lost_events_printing() -> None:
    le = lost_events_response("hubble_ring_buffer", 7, "apiary-node", time_ns=parse_rfc3339_ns(T0))
    assert compact(le) == "Jan  4 13:23:47.852 EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 7"
    no_time = {"lost_events": le["lost_events"]}
    assert compact(no_time) == "EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 7"
    assert table([le]).splitlines()[1].split() == ["HUBBLE_RING_BUFFER", "EVENTS", "LOST", "CPU(0)", "-", "7"]
    assert "       TYPE: EVENTS LOST" in dict_format([le])
    assert lost_events_response(1, 3, "n", cpu=2, time_ns=0)["lost_events"] == {
        "source": "PERF_EVENT_RING_BUFFER",
        "num_events_lost": "3",
        "cpu": 2,
    }
    with pytest.raises(ValueError):
        lost_events_response("nowhere", 1, "n")


# --- ring ----------------------------------------------------------------------------------------


def test_ring_basics() -> None:
    ring = FlowRing()
    assert ring.capacity == 4095 and len(ring) == 0 and ring.last(5) == [] and ring.since(0) == ([], 0)
    ring = FlowRing(4)
    for i in range(3):
        assert ring.append(i) == i
    assert ring.last(2) == [1, 2] and ring.last(10) == [0, 1, 2] and ring.first(2) == [0, 1]
    assert ring.since(1) == ([1, 2], 0)
    for i in range(3, 10):
        ring.append(i)
    assert len(ring) == 4 and ring.next_seq == 10 and ring.oldest_seq == 6 and ring.overwritten == 6
    assert ring.last(10) == [6, 7, 8, 9] and ring.first(1) == [6]


def test_ring_lost_counting_for_a_lagging_reader() -> None:
    ring = FlowRing(4)
    cursor = ring.next_seq
    for i in range(3):
        ring.append(i)
    items, lost = ring.since(cursor)
    assert (items, lost) == ([0, 1, 2], 0)
    cursor += lost + len(items)
    for i in range(3, 10):  # 7 new items, only 4 fit
        ring.append(i)
    items, lost = ring.since(cursor)
    assert (items, lost) == ([6, 7, 8, 9], 3)
    cursor += lost + len(items)
    assert ring.since(cursor) == ([], 0)
    assert ring.since(cursor + 5) == ([], 0)
    with pytest.raises(ValueError):
        FlowRing(0)


def test_dict_format_single_response_streaming() -> None:
    b = builder()
    one, two = b.build(syn_egress()), b.build(default_deny_drop())
    streamed = dict_format(one) + "\n" + dict_format(two, leading_separator=True)
    assert streamed == dict_format([one, two])
    assert dict_format([]) == "" and dict_format([], leading_separator=True) == ""
