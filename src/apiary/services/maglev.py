"""Maglev consistent hashing (Eisenbud et al., NSDI 2016) as Cilium's pkg/maglev builds its lookup table.

Each backend gets a permutation of the M table slots from two hashes of its name and the hash seed
(offset = h1 mod M, skip = h2 mod (M-1) + 1, slot j = (offset + j*skip) mod M); backends then take turns
claiming their next free preferred slot until the table is full. A backend of weight w takes w turns per
round. M must be one of Cilium's allowed primes (default 16381; rule of thumb M > 100·N).

As in Cilium: the two hashes are the halves of MurmurHash3 x64-128 of the name, seeded with the first four
bytes (big-endian) of the base64-decoded 12-byte hash seed; backends are sorted by name first (so the table
does not depend on their order); ``table`` returns indexes into that sorted order. Weights here give a
backend ``w`` turns per round (Cilium uses Envoy's weight counters; both honour the ratio, the slots differ).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

ALLOWED_TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TABLE_SIZE = 16381
DEFAULT_HASH_SEED = "JLfvgnHc2kaSUFaI"


class MaglevError(ValueError):
    pass


_MASK = (1 << 64) - 1
_C1, _C2 = 0x87C37B91114253D5, 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK
    return k ^ (k >> 33)


def _mix_k1(k1: int) -> int:
    return (_rotl((k1 * _C1) & _MASK, 31) * _C2) & _MASK


def _mix_k2(k2: int) -> int:
    return (_rotl((k2 * _C2) & _MASK, 33) * _C1) & _MASK


def murmur3_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64-128 (Austin Appleby's reference algorithm) as two unsigned 64-bit halves."""
    h1 = h2 = seed & 0xFFFFFFFF
    n = len(data) // 16 * 16
    for i in range(0, n, 16):
        k1 = int.from_bytes(data[i:i + 8], "little")
        k2 = int.from_bytes(data[i + 8:i + 16], "little")
        h1 ^= _mix_k1(k1)
        h1 = (_rotl(h1, 27) + h2) & _MASK
        h1 = (h1 * 5 + 0x52DCE729) & _MASK
        h2 ^= _mix_k2(k2)
        h2 = (_rotl(h2, 31) + h1) & _MASK
        h2 = (h2 * 5 + 0x38495AB5) & _MASK
    tail = data[n:]
    if len(tail) > 8:
        h2 ^= _mix_k2(int.from_bytes(tail[8:], "little"))
    if tail:
        h1 ^= _mix_k1(int.from_bytes(tail[:8], "little"))
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    return h1, h2


def murmur_seed(seed: str = DEFAULT_HASH_SEED) -> int:
    """Cilium's ``bpf-lb-maglev-hash-seed``: base64 of 12 bytes; the first four (big-endian) seed murmur3."""
    try:
        raw = base64.b64decode(seed, validate=True)
    except ValueError:
        raise MaglevError(f"Maglev hash seed {seed!r} is not base64") from None
    if len(raw) != 12:
        raise MaglevError(f"Maglev hash seed {seed!r} decodes to {len(raw)} bytes, not 12")
    return int.from_bytes(raw[:4], "big")


def offset_skip(name: str, m: int, seed: str = DEFAULT_HASH_SEED) -> tuple[int, int]:
    h1, h2 = murmur3_128(name.encode(), murmur_seed(seed))
    return h1 % m, h2 % (m - 1) + 1


def table(backends: Sequence[str], m: int = DEFAULT_TABLE_SIZE, *, weights: Sequence[int] | None = None,
          seed: str = DEFAULT_HASH_SEED) -> list[int]:
    """The lookup table: ``m`` indexes into ``backends`` (names the same on every node, e.g. ``ip:port``;
    the table does not depend on their order). Empty for no backends (or all of weight 0)."""
    if m not in ALLOWED_TABLE_SIZES:
        raise MaglevError(f"Maglev table size {m} is not allowed: use one of "
                          f"{', '.join(map(str, ALLOWED_TABLE_SIZES))}")
    if len(set(backends)) != len(backends):
        raise MaglevError("backend names must be unique")
    weights = list(weights) if weights is not None else [1] * len(backends)
    if len(weights) != len(backends) or any(w < 0 for w in weights):
        raise MaglevError("one weight >= 0 per backend")
    live = sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: backends[i])
    if not live:
        return []
    if len(live) > m:
        raise MaglevError(f"{len(live)} backends do not fit a table of {m}")
    mseed = murmur_seed(seed)
    params = {}
    for i in live:
        h1, h2 = murmur3_128(backends[i].encode(), mseed)
        params[i] = (h1 % m, h2 % (m - 1) + 1)
    nxt = dict.fromkeys(live, 0)
    lut = [-1] * m
    filled = 0
    while True:
        for i in live:
            off, skip = params[i]
            for _ in range(weights[i]):
                c = (off + nxt[i] * skip) % m
                while lut[c] >= 0:
                    nxt[i] += 1
                    c = (off + nxt[i] * skip) % m
                lut[c] = i
                nxt[i] += 1
                filled += 1
                if filled == m:
                    return lut
