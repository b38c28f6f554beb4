"""Every kernel ABI mirrored in Python against its C side (as Tetragon's pkg/alignchecker): each registered
struct against the BTF of the built object (size, each member's name, offset and size), each header struct
mirrored or declared kernel-only, each shared constant against the header's #define or enumerator.

Needs the built objects (``make build``), not root: BTF is read from the .o files through libbpf."""

from __future__ import annotations

import ast
import ctypes
import operator
import re
from pathlib import Path
from types import ModuleType

import pytest

import apiary
from apiary.loader.btf import Btf
from apiary.loader.paths import bpf_object
from apiary.sensors.abi import MsgType, layout, mirrors, packed

INCLUDE = Path(apiary.__file__).resolve().parent / "bpf" / "include"
MODULES = mirrors()
STRUCTS = [(m, name) for m in MODULES for name in m.STRUCTS]


def _id(v: object) -> str:
    return v.__name__.split(".")[-2] if isinstance(v, ModuleType) else str(v)


def _source(m: ModuleType) -> str:
    """The header without comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", (INCLUDE / m.HEADER).read_text(), flags=re.S)


_OPS = {ast.LShift: operator.lshift, ast.BitOr: operator.or_, ast.Add: operator.add, ast.Sub: operator.sub,
        ast.Mult: operator.mul, ast.RShift: operator.rshift}


def _eval(expr: str, known: dict[str, int]) -> int:
    """An integer constant expression of a header (literals with U/L suffixes, names, << | + - * >>)."""
    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name):
            return known[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return int(_OPS[type(n.op)](ev(n.left), ev(n.right)))
        raise ValueError(f"not an integer constant: {expr!r}")

    return ev(ast.parse(re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr), mode="eval").body)


def header_constants(text: str) -> dict[str, int]:
    """{name: value} of a header's integer #defines and enumerators."""
    out: dict[str, int] = {}
    for name, expr in re.findall(r"^[ \t]*#define[ \t]+(\w+)[ \t]+([^\n]+)$", text, flags=re.M):
        try:
            out[name] = _eval(expr.strip(), out)
        except (ValueError, KeyError, SyntaxError):
            continue  # not an integer constant (a type, a macro with arguments...)
    for body in re.findall(r"\benum\b[^{;]*\{(.*?)\}", text, flags=re.S):
        nxt = 0
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, expr = (p.strip() for p in item.partition("="))
            out[name] = nxt = _eval(expr, out) if expr else nxt
            nxt += 1
    return out


@pytest.fixture(scope="module")
def btfs() -> dict[str, Btf]:
    objs = {m.OBJECT: bpf_object(m.OBJECT) for m in MODULES}
    if not all(p.exists() for p in objs.values()):
        pytest.skip("BPF objects not built (run `make build`)")
    out = {name: Btf.from_file(str(p)) for name, p in objs.items()}
    yield out
    for b in out.values():
        b.close()


@pytest.mark.parametrize(("module", "struct"), STRUCTS, ids=[f"{_id(m)}:{s}" for m, s in STRUCTS])
def test_mirror_matches_btf_of_built_object(btfs: dict[str, Btf], module: ModuleType, struct: str) -> None:
    btf_size, btf_members = btfs[module.OBJECT].struct_layout(struct)
    size, members = layout(module.STRUCTS[struct])
    assert list(members) == list(btf_members), f"struct {struct}: members BTF {list(btf_members)}, Py {list(members)}"
    diff = {k: (btf_members[k], members[k]) for k in members if members[k] != btf_members[k]}
    assert not diff, f"struct {struct}: (offset, size) of members differ, BTF vs Python: {diff}"
    assert size == btf_size, f"struct {struct}: BTF size {btf_size}, Python {size}"


@pytest.mark.parametrize("module", MODULES, ids=_id)
def test_every_header_struct_is_mirrored_or_kernel_only(module: ModuleType) -> None:
    declared = set(re.findall(r"\bstruct\s+(\w+)\s*\{", _source(module)))
    known = set(module.STRUCTS) | set(module.KERNEL_ONLY)
    assert not set(module.STRUCTS) & set(module.KERNEL_ONLY)
    assert declared == known, (
        f"{module.HEADER}: neither mirrored nor kernel-only {sorted(declared - known)}, "
        f"registered but not in the header {sorted(known - declared)}")


@pytest.mark.parametrize("module", MODULES, ids=_id)
def test_shared_constants_equal_the_header(module: ModuleType) -> None:
    consts = header_constants(_source(module))
    missing = sorted(set(module.DEFINES) - set(consts))
    assert not missing, f"{module.HEADER} defines none of {missing}"
    diff = {k: (consts[k], v) for k, v in module.DEFINES.items() if consts[k] != v}
    assert not diff, f"{module.HEADER} vs Python (header, Python): {diff}"


def test_message_types_are_one_enum_over_both_headers() -> None:
    by_header = {k: v for m in MODULES for k, v in header_constants(_source(m)).items() if k.startswith("MSG_")}
    assert by_header == {f"MSG_{t.name}": t.value for t in MsgType}


def _expected(typ: type, raw: bytes, off: int) -> list[object]:
    """The values packed() should give for a member of type typ at off, read from the bytes directly."""
    if issubclass(typ, ctypes.Structure):
        out: list[object] = []
        for name, t, *_ in typ._fields_:
            if not name.startswith("_"):
                out += _expected(t, raw, off + getattr(typ, name).offset)
        return out
    if issubclass(typ, ctypes.Array):
        if typ._type_ in (ctypes.c_uint8, ctypes.c_char):
            return [raw[off : off + ctypes.sizeof(typ)]]
        step = ctypes.sizeof(typ._type_)
        return [v for i in range(typ._length_) for v in _expected(typ._type_, raw, off + i * step)]
    signed = typ(-1).value < 0
    return [int.from_bytes(raw[off : off + ctypes.sizeof(typ)], "little", signed=signed)]


@pytest.mark.parametrize(("module", "struct"), STRUCTS, ids=[f"{_id(m)}:{s}" for m, s in STRUCTS])
def test_packed_decoder_reads_every_member_at_its_offset(module: ModuleType, struct: str) -> None:
    """The struct.Struct derived from a mirror (what the hot decoders use) sees each non-padding member
    where the mirror has it."""
    cls = module.STRUCTS[struct]
    raw = bytes((i * 7 + 1) % 256 for i in range(ctypes.sizeof(cls)))  # distinct-ish bytes: a shift shows
    assert list(packed(cls).unpack(raw)) == _expected(cls, raw, 0)


def test_header_constants_parser() -> None:
    text = "#define A 4\n#define B (1 << 2)\n#define C (A * 2 + B)\n#define D 0xffULL\n#define F(x) x\n" \
           "enum e { E0 = 0, E1, E2 = 7, E3, };"
    assert header_constants(text) == {"A": 4, "B": 4, "C": 12, "D": 255, "E0": 0, "E1": 1, "E2": 7, "E3": 8}
