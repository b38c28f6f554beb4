"""The quick reject a syscall hook's entry program checks before anything else (abi.quick_values): which
hooks get one, and the 8-byte words and masks it compares."""

from __future__ import annotations

from tracing_compile_helpers import build

from apiary.sensors.tracing.abi import GS_QUICK, HookCfg, encode_hook, quick_values
from apiary.tracing.types import Hook


def _hook(selectors: str, args: str = "[{index: 1, type: string}, {index: 2, type: int}]") -> Hook:
    spec = f"""
kprobes:
- call: sys_openat
  syscall: true
  args: {args}
  selectors:
{selectors}
"""
    [h] = build(spec).hooks
    return h


def _word(b: bytes) -> int:
    return int.from_bytes(b.ljust(8, b"\0")[:8], "little")


def test_prefix_compares_its_first_eight_bytes() -> None:
    qv = quick_values(_hook('  - matchArgs: [{index: 1, operator: Prefix, values: ["/nonexistent-apiary/", "/etc/"]}]'))
    assert qv is not None
    reg, words = qv
    assert reg == 1  # the register of the compared argument (openat's filename)
    assert words == [(_word(b"/nonexis"), (1 << 64) - 1), (_word(b"/etc/"), (1 << 40) - 1)]


def test_short_equal_includes_its_nul() -> None:
    sel = '  - matchArgs: [{index: 1, operator: Equal, values: ["/a", "/long/enough/path"]}]'
    _, words = quick_values(_hook(sel)) or (0, [])
    # "/a" then the NUL: "/ab" does not pass; a value of 8 bytes or more compares its first 8
    assert words == [(_word(b"/a"), (1 << 24) - 1), (_word(b"/long/en"), (1 << 64) - 1)]


def test_every_selector_must_compare_the_string() -> None:
    both = """  - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
  - matchArgs: [{index: 1, operator: Equal, values: ["/tmp/x"]}, {index: 2, operator: Equal, values: ["3"]}]"""
    qv = quick_values(_hook(both))
    assert qv is not None and len(qv[1]) == 2
    # a selector that could match any string: no quick reject (it would drop calls that selector matches)
    other = """  - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
  - matchArgs: [{index: 2, operator: Equal, values: ["3"]}]"""
    assert quick_values(_hook(other)) is None
    assert quick_values(_hook('  - matchArgs: [{index: 1, operator: NotPrefix, values: ["/etc/"]}]')) is None
    assert quick_values(_hook('  - matchArgs: [{index: 1, operator: Postfix, values: [".so"]}]')) is None


def test_too_many_values_or_an_empty_prefix() -> None:
    sels = "\n".join(f'  - matchArgs: [{{index: 1, operator: Prefix, values: ["/a{i}/", "/b{i}/", "/c{i}/"]}}]'
                     for i in range(2))
    assert 6 > GS_QUICK and quick_values(_hook(sels)) is None  # 6 values across the selectors
    # an empty Prefix: mask 0, every string passes (the selectors decide)
    _, words = quick_values(_hook('  - matchArgs: [{index: 1, operator: Prefix, values: [""]}]')) or (0, [])
    assert words == [(0, 0)]


def test_encoded_in_the_hook_record() -> None:
    h = _hook('  - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]')
    cfg = HookCfg.from_buffer_copy(encode_hook(h, 1, 0, 0))
    assert (cfg.quick.reg, cfg.quick.n, cfg.quick.val[0], cfg.quick.mask[0]) == (1, 1, _word(b"/etc/"), (1 << 40) - 1)
    none = _hook('  - matchArgs: [{index: 2, operator: Equal, values: ["3"]}]')
    assert HookCfg.from_buffer_copy(encode_hook(none, 1, 0, 0)).quick.n == 0
