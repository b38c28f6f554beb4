"""Maglev consistent hashing (Eisenbud et al., NSDI 2016) as Cilium's pkg/maglev builds its lookup table.

Each backend gets a permutation of the M table slots from two hashes of its name and the hash seed
(offset = h1 mod M, skip = h2 mod (M-1) + 1, slot j = (offset + j*skip) mod M); backends then take turns
claiming their next free preferred slot until the table is full. A backend of weight w takes w turns per
round. M must be one of Cilium's allowed primes (default 16381; rule of thumb M > 100·N).

Cilium hashes with MurmurHash3 (x64, 128 bits); this module uses BLAKE2b-128 from the standard library (no
murmur3 package here), so the tables have Cilium's properties and shape but not its exact slot values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

ALLOWED_TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TABLE_SIZE = 16381
DEFAULT_HASH_SEED = "JLfvgnHc2kaSUFaI"


class MaglevError(ValueError):
    pass


def offset_skip(name: str, m: int, seed: str = DEFAULT_HASH_SEED) -> tuple[int, int]:
    digest = hashlib.blake2b((name + seed).encode(), digest_size=16).digest()
    h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
    return h1 % m, h2 % (m - 1) + 1


def table(backends: Sequence[str], m: int = DEFAULT_TABLE_SIZE, *, weights: Sequence[int] | None = None,
          seed: str = DEFAULT_HASH_SEED) -> list[int]:
    """The lookup table: ``m`` indexes into ``backends`` (names, e.g. ``ip:port``, or backend ids as text).
    Empty for no backends (or all of weight 0)."""
    if m not in ALLOWED_TABLE_SIZES:
        raise MaglevError(f"Maglev table size {m} is not allowed: use one of "
                          f"{', '.join(map(str, ALLOWED_TABLE_SIZES))}")
    if len(set(backends)) != len(backends):
        raise MaglevError("backend names must be unique")
    weights = list(weights) if weights is not None else [1] * len(backends)
    if len(weights) != len(backends) or any(w < 0 for w in weights):
        raise MaglevError("one weight >= 0 per backend")
    live = [i for i, w in enumerate(weights) if w > 0]
    if not live:
        return []
    if len(live) > m:
        raise MaglevError(f"{len(live)} backends do not fit a table of {m}")
    params = {i: offset_skip(backends[i], m, seed) for i in live}
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
