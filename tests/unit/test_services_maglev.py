"""Maglev table properties: balance, minimal disruption, determinism, allowed sizes."""

from __future__ import annotations

from collections import Counter

import pytest

from apiary.services.maglev import (
    ALLOWED_TABLE_SIZES,
    DEFAULT_TABLE_SIZE,
    MaglevError,
    murmur3_128,
    murmur_seed,
    offset_skip,
    table,
)


def _names(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(n)]


@pytest.mark.parametrize("n", [3, 10, 100])
def test_each_backend_share_within_one_percent(n: int) -> None:
    lut = table(_names(n), DEFAULT_TABLE_SIZE)
    assert len(lut) == 16381 and set(lut) == set(range(n))
    equal = DEFAULT_TABLE_SIZE / n
    for count in Counter(lut).values():
        assert abs(count - equal) <= 0.01 * equal, (count, equal)


@pytest.mark.parametrize("n", [3, 10, 100])
def test_minimal_disruption_when_one_backend_goes(n: int) -> None:
    names = _names(n)
    before = table(names)
    gone = n // 2
    after_names = names[:gone] + names[gone + 1:]
    after = table(after_names)
    moved = sum(1 for a, b in zip(before, after, strict=True) if names[a] != after_names[b])
    own = before.count(gone)
    # the removed backend's slots must move; Maglev moves a few more (the paper's bound is small)
    assert moved >= own
    assert moved <= own + 0.02 * DEFAULT_TABLE_SIZE + own * 0.1, (moved, own)
    # slots of surviving backends mostly stay
    kept = sum(1 for a, b in zip(before, after, strict=True) if a != gone and names[a] == after_names[b])
    assert kept >= (DEFAULT_TABLE_SIZE - own) * 0.97


def test_murmur3_reference_vectors() -> None:
    # published MurmurHash3 x64-128 values (mmh3's documentation; the 43-byte one covers full blocks)
    assert murmur3_128(b"") == (0, 0)
    assert murmur3_128(b"foo") == (16316970633193145697, 9128664383759220103)
    assert murmur3_128(b"foo", 42) == (-840311307571801102 % 2**64, -6739155424061121879 % 2**64)
    h1, h2 = murmur3_128(b"The quick brown fox jumps over the lazy dog")
    assert (h1.to_bytes(8, "little") + h2.to_bytes(8, "little")).hex() == "6c1b07bc7bbc4be347939ac4a93c437a"


def test_hash_seed() -> None:
    assert murmur_seed() == int.from_bytes(bytes([0x24, 0xB7, 0xEF, 0x82]), "big")  # "JLfv" base64-decoded
    with pytest.raises(MaglevError, match="decodes to 3 bytes, not 12"):
        murmur_seed("AAAA")
    with pytest.raises(MaglevError, match="is not base64"):
        murmur_seed("not base64!")


def test_deterministic_order_free_and_seeded() -> None:
    names = _names(10)
    lut = table(names, 251)
    assert lut == table(names, 251)
    shuffled = names[::-1]
    assert [names[i] for i in lut] == [shuffled[i] for i in table(shuffled, 251)]
    assert lut != table(names, 251, seed="AAAAAAAAAAAAAAAA")
    off, skip = offset_skip("a", 251)
    assert 0 <= off < 251 and 1 <= skip < 251


@pytest.mark.parametrize("m", [0, 250, 16383, 65536])
def test_invalid_table_size_refused(m: int) -> None:
    with pytest.raises(MaglevError, match=f"Maglev table size {m} is not allowed: use one of 251, 509"):
        table(["a"], m)


def test_every_allowed_size_is_prime() -> None:
    for m in ALLOWED_TABLE_SIZES:
        assert all(m % d for d in range(2, int(m ** 0.5) + 1))


def test_weights_and_edges() -> None:
    lut = table(["a", "b"], 1021, weights=[3, 1])
    counts = Counter(lut)
    assert abs(counts[0] / counts[1] - 3) < 0.05
    assert table(["a", "b"], 251, weights=[0, 1]) == [1] * 251
    assert table([], 251) == []
    with pytest.raises(MaglevError, match="unique"):
        table(["a", "a"], 251)
    with pytest.raises(MaglevError, match="do not fit"):
        table([str(i) for i in range(252)], 251)
