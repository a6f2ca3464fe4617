"""A tiny assembler for Elbrus 2000 (e2k) wide instructions, enough for test firmware.

Mainline QEMU has no e2k target; the only e2k system emulator the harness
meets is OpenE2K/qemu-e2k (branch ``e2k-softmmu``).  Every encoding below is
taken from how *that* emulator decodes it, and each one names the decoder
function it was read from.  "translate.c" below is ``target/e2k/translate.c``
and "alops.inc" is ``target/e2k/alops.inc`` of that tree.  No code was
copied: this module only produces the bit patterns those functions accept.

An e2k instruction is a *wide instruction* (a bundle): a header syllable
``HS`` followed by optional 32-bit syllables, 8 to 64 bytes long and 8-byte
aligned.  The subset here:

* ``ALS0..ALS5`` - one arithmetic/logic/memory operation per channel (0-5);
* ``SS`` + ``CS0`` - a relative branch (``ibranch``), unconditional or on a
  predicate register;
* ``LTS0..LTS3`` - 32-bit literal syllables, used by operands that do not fit
  a 4/5-bit immediate.

Layout of a bundle (``unpack_bundle`` in translate.c)::

    HS | SS? | ALS0..5? | CS0? | [ALES2/5 pad] | ...gap... | LTSn .. LTS1 LTS0

The *middle* part (HS up to CS0/CS1) is read forwards and its byte size is
``(HS.mdl + 1) * 4``; literal syllables are read backwards from the end of the
bundle (``LTS0`` is the last syllable), down to the end of the middle part.
An odd syllable count is padded to 8 bytes with one zero syllable: at the low
end of the literal area (the decoder sees an unused extra literal) or, when
all four literal slots are taken, as an allocated-but-unused ALES2/5
syllable in the middle part (``unpack_bundle``: "ALES2/5 may be allocated
but must not be used").

Operations within a bundle read their operands before any of them writes a
result (``gen_alop_save_dst`` saves a destination a later channel reads), and
a branch's predicate is the value from *before* the bundle
(``is_preg_used_by_ct``), so a compare and the branch that tests it go in
consecutive bundles.

Timing is not modelled: qemu-e2k executes bundle after bundle, so a
result is usable in the next bundle.  Real hardware has latencies (loads,
compare-to-branch) that this encoder does not insert delays for; the
firmware built with it is meant for the emulator.

Register operands (``gen_reg_index``): ``%gN`` (global, N < 32) is
``0xe0 | N``; ``%rN`` (window, N < 64) is ``0x80 | N``; ``%bN`` (rotating
base, N < 128) is ``N``.  The firmware uses globals only: they need no
register window set-up.

Example::

    p = Program(origin=0x1_0000_0000)
    p.label("loop")
    p.bundle(addd(g(0), g(0), 1))
    p.bundle(ct="loop")
    image = p.assemble()
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "AsmError", "Reg", "Imm", "Lit", "g", "r", "b", "Pred", "pred",
    "Op", "addd", "subd", "ord_", "andd", "ldb", "ldd", "stb", "std", "cmpedb", "cmpbdb",
    "Branch", "Bundle", "bundle", "Program", "words", "BUNDLE_ALIGN", "MAX_BUNDLE",
    "CT_ALWAYS", "CT_PRED", "CT_NOT_PRED",
    "HS_SS", "HS_CS0", "HS_CS1", "hs_als_bit",
]

BUNDLE_ALIGN = 8
#: HS.lng is 3 bits: (lng + 1) * 8 bytes (``unpack_bundle`` returns 8 + lng * 8).
MAX_BUNDLE = 64
MAX_LTS = 4

# -- HS bits (``unpack_bundle`` in translate.c) ------------------------------
HS_MDL_SHIFT, HS_MDL_MASK = 0, 0xF     # middle size in syllables - 1
HS_LNG_SHIFT, HS_LNG_MASK = 4, 0x7     # bundle size in 8-byte units - 1
HS_SS = 1 << 12
HS_CS0 = 1 << 14
HS_CS1 = 1 << 15                       # never set here


def hs_als_bit(chan: int) -> int:
    """HS bit saying ALS<chan> is present (bits 26..31)."""
    return 1 << (26 + chan)


class AsmError(ValueError):
    """The program cannot be encoded (bad operand, impossible bundle, far label...)."""


# -- operands ----------------------------------------------------------------

@dataclass(frozen=True)
class Reg:
    """A register operand; ``code`` is its 8-bit operand field."""

    code: int
    name: str

    def __str__(self) -> str:
        return self.name


def g(n: int) -> Reg:
    """Global register %gN: 0xe0 | N (``IS_GLOBAL``/``GET_GLOBAL`` in translate.c)."""
    if not 0 <= n < 32:
        raise AsmError(f"%g{n}: global registers are %g0..%g31")
    return Reg(0xE0 | n, f"%g{n}")


def r(n: int) -> Reg:
    """Window register %rN: 0x80 | N (``IS_REGULAR``); needs a window of > N registers."""
    if not 0 <= n < 64:
        raise AsmError(f"%r{n}: window registers are %r0..%r63")
    return Reg(0x80 | n, f"%r{n}")


def b(n: int) -> Reg:
    """Rotating base register %bN: N (``IS_BASED``)."""
    if not 0 <= n < 128:
        raise AsmError(f"%b{n}: based registers are %b0..%b127")
    return Reg(n, f"%b{n}")


@dataclass(frozen=True)
class Imm:
    """A small unsigned immediate: 0..31 as src1 (imm5), 0..15 as src2 (imm4)."""

    value: int


@dataclass(frozen=True)
class Lit:
    """A literal in LTS syllables; ``wide`` (64-bit, two slots) or 32-bit sign-extended.

    ``get_literal`` in translate.c: src2 ``0xd8 | i`` is LTS<i> as a signed
    32-bit value, ``0xdc | i`` (i < 3) is LTS<i+1>:LTS<i> as 64 bits.
    """

    value: int          # as unsigned 64-bit
    wide: bool

    @staticmethod
    def of(value: int) -> "Lit":
        """The narrowest literal whose value, as a 64-bit operand, is ``value``."""
        if not -(2**63) <= value < 2**64:
            raise AsmError(f"literal {value:#x} does not fit 64 bits")
        v = value & (2**64 - 1)
        signed = v - 2**64 if v >> 63 else v
        return Lit(v, wide=not -(2**31) <= signed < 2**31)


@dataclass(frozen=True)
class Pred:
    """Predicate register %predN, N < 32 (5-bit fields in ALS and SS)."""

    n: int

    def __post_init__(self) -> None:
        if not 0 <= self.n < 32:
            raise AsmError(f"%pred{self.n}: predicates are %pred0..%pred31")

    def __str__(self) -> str:
        return f"%pred{self.n}"


def pred(n: int) -> Pred:
    return Pred(n)


Src = Union[Reg, int, Lit]

# Operand field codes (IMPL_GEN_TAGGED_SRC1/SRC2 in translate.c).
_IMM_BASE = 0xC0          # IS_IMM5 (src1, 0xc0..0xdf) / IS_IMM4 (src2, 0xc0..0xcf)
_LIT32_BASE = 0xD8        # IS_LIT32: (x & 0x0c) == 0x08
_LIT64_BASE = 0xDC        # IS_LIT64: (x & 0x0c) == 0x0c, index < 3


def _src1(x: Src) -> Reg | Imm:
    if isinstance(x, Reg):
        return x
    if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 32:
        return Imm(x)
    raise AsmError(f"src1 must be a register or an immediate 0..31, got {x!r}")


def _src2(x: Src) -> Reg | Imm | Lit:
    if isinstance(x, (Reg, Lit)):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return Imm(x) if 0 <= x < 16 else Lit.of(x)
    raise AsmError(f"src2 must be a register, an integer or a Lit, got {x!r}")


def _text(x: Reg | Imm | Lit) -> str:
    if isinstance(x, Reg):
        return x.name
    if isinstance(x, Imm):
        return str(x.value)
    return f"{x.value:#x}"


# -- operations (ALS syllables) ------------------------------------------------
# ALS bit fields (the ``als`` union of ``Alop`` in translate.c):
#   31 sm | 30..24 opc1 | 23..16 src1 | 15..8 src2 | 7..0 dst / src4
#   ALOPF7 (compares) low byte: 7..5 opc_cmp | 4..0 dst_preg

CHAN_ALL = frozenset(range(6))
CHAN_0134 = frozenset({0, 1, 3, 4})
CHAN_0235 = frozenset({0, 2, 3, 5})
CHAN_25 = frozenset({2, 5})


@dataclass(frozen=True)
class Op:
    """One ALS syllable before channel and literal-slot assignment."""

    name: str
    opc1: int
    channels: frozenset[int]
    src1: Reg | Imm
    src2: Reg | Imm | Lit
    low: int                   # dst / src4 register code, or opc_cmp<<5 | pred
    text: str
    kind: str = "alu"          # "alu", "load", "store" or "cmp"
    chan: int | None = None    # requested channel, or None for the first that fits

    def on(self, chan: int) -> "Op":
        """The same operation pinned to channel ``chan``."""
        if chan not in self.channels:
            raise AsmError(f"{self.name} cannot run on channel {chan} "
                           f"(allowed: {sorted(self.channels)})")
        return Op(self.name, self.opc1, self.channels, self.src1, self.src2, self.low,
                  self.text, self.kind, chan)

    def literal(self) -> Lit | None:
        return self.src2 if isinstance(self.src2, Lit) else None

    def encode(self, lit_field: int | None = None) -> int:
        """The ALS word; ``lit_field`` is the src2 code of this op's literal slot."""
        s1 = self.src1.code if isinstance(self.src1, Reg) else _IMM_BASE | self.src1.value
        if isinstance(self.src2, Reg):
            s2 = self.src2.code
        elif isinstance(self.src2, Imm):
            s2 = _IMM_BASE | self.src2.value
        else:
            if lit_field is None:
                raise AsmError(f"{self.text}: literal has no slot")
            s2 = lit_field
        return (self.opc1 << 24) | (s1 << 16) | (s2 << 8) | self.low


def _alopf1(name: str, opc1: int, channels: frozenset[int], dst: Reg, src1: Src,
            src2: Src, kind: str = "alu") -> Op:
    if not isinstance(dst, Reg):
        raise AsmError(f"{name}: destination must be a register, got {dst!r}")
    a, c = _src1(src1), _src2(src2)
    return Op(name, opc1, channels, a, c, dst.code, f"{name} {_text(a)}, {_text(c)}, {dst}",
              kind)


# ALOPF1, ALOP_SHORT, all channels (alops.inc: OP_ADDD 0x11, OP_SUBD 0x13,
# OP_ORD 0x05, OP_ANDD 0x01); 64-bit, dst = src1 op src2.
def addd(dst: Reg, src1: Src, src2: Src) -> Op:
    return _alopf1("addd", 0x11, CHAN_ALL, dst, src1, src2)


def subd(dst: Reg, src1: Src, src2: Src) -> Op:
    return _alopf1("subd", 0x13, CHAN_ALL, dst, src1, src2)


def ord_(dst: Reg, src1: Src, src2: Src) -> Op:
    return _alopf1("ord", 0x05, CHAN_ALL, dst, src1, src2)


def andd(dst: Reg, src1: Src, src2: Src) -> Op:
    return _alopf1("andd", 0x01, CHAN_ALL, dst, src1, src2)


# ALOPF1_MAS loads, channels 0,2,3,5 (alops.inc: OP_LDB 0x64, OP_LDD 0x67);
# address = src1 + src2 (``gen_addr_i64``), zero-extended into the 64-bit dst
# (``gen_ld_raw_i64``).  Without a CS1 MAS syllable mas = 0, i.e. a plain
# little-endian access that must be naturally aligned (``memop_from_mas``).
def ldb(dst: Reg, base: Src, off: Src = 0) -> Op:
    return _alopf1("ldb", 0x64, CHAN_0235, dst, base, off, "load")


def ldd(dst: Reg, base: Src, off: Src = 0) -> Op:
    return _alopf1("ldd", 0x67, CHAN_0235, dst, base, off, "load")


# ALOPF3 stores, channels 2,5 (alops.inc: OP_STB 0x24, OP_STD 0x27): address
# = src1 + src2, value in the low byte (src4; ``IMPL_GEN_ST``).  stb stores the
# value's low 8 bits.
def _alopf3(name: str, opc1: int, base: Src, off: Src, value: Reg) -> Op:
    if not isinstance(value, Reg):
        raise AsmError(f"{name}: the stored value must be a register, got {value!r}")
    a, c = _src1(base), _src2(off)
    return Op(name, opc1, CHAN_25, a, c, value.code,
              f"{name} {_text(a)}, {_text(c)}, {value}", "store")


def stb(base: Src, off: Src, value: Reg) -> Op:
    return _alopf3("stb", 0x24, base, off, value)


def std(base: Src, off: Src, value: Reg) -> Op:
    return _alopf3("std", 0x27, base, off, value)


# ALOPF7 compares into a predicate, channels 0,1,3,4 (alops.inc: opc1 0x21
# for 64-bit operands, opc_cmp 2 = equal, 1 = unsigned below; gen_cmpedb /
# gen_cmpbdb are setcond EQ / LTU).
def _alopf7(name: str, opc_cmp: int, dst: Pred, src1: Src, src2: Src) -> Op:
    if not isinstance(dst, Pred):
        raise AsmError(f"{name}: destination must be a predicate, got {dst!r}")
    a, c = _src1(src1), _src2(src2)
    return Op(name, 0x21, CHAN_0134, a, c, (opc_cmp << 5) | dst.n,
              f"{name} {_text(a)}, {_text(c)}, {dst}", "cmp")


def cmpedb(dst: Pred, src1: Src, src2: Src) -> Op:
    return _alopf7("cmpedb", 2, dst, src1, src2)


def cmpbdb(dst: Pred, src1: Src, src2: Src) -> Op:
    return _alopf7("cmpbdb", 1, dst, src1, src2)


# -- control transfer (SS + CS0) -------------------------------------------------

#: SS.ctcond.type values (``gen_ct_cond``): 1 always, 2 %predN, 3 ~%predN.
CT_ALWAYS, CT_PRED, CT_NOT_PRED = 1, 2, 3


@dataclass(frozen=True)
class Branch:
    """``ibranch`` to a label: CS0 holds the displacement, SS the condition.

    ``decode_cs0``: CS0 with ctpr (bits 31..30) = 0 and ctp_opc (29..28) = 0
    is IBRANCH; its target is the bundle's own address plus
    ``sext(CS0[27:0]) << 3``; it needs SS present with SS.ctop (11..10) = 0
    and SS.ctcond (8..0) != 0.  ``decode_ct_cond``: SS[4:0] = psrc (the
    predicate), SS[8:5] = condition type.
    """

    target: str
    cond: int = CT_ALWAYS
    pred: int = 0

    def ss(self) -> int:
        return (self.cond << 5) | self.pred

    def cs0(self, disp: int) -> int:
        if disp % BUNDLE_ALIGN:
            raise AsmError(f"branch to {self.target}: displacement {disp} is not a "
                           f"multiple of {BUNDLE_ALIGN}")
        units = disp // BUNDLE_ALIGN
        if not -(1 << 27) <= units < (1 << 27):
            raise AsmError(f"branch to {self.target}: displacement {disp} out of range")
        return units & 0x0FFF_FFFF

    def text(self) -> str:
        cond = {CT_ALWAYS: "", CT_PRED: f" ? %pred{self.pred}",
                CT_NOT_PRED: f" ? ~%pred{self.pred}"}[self.cond]
        return f"ibranch {self.target}{cond}"


def _branch(ct: Union[str, Branch, None], if_pred: int | None,
            unless_pred: int | None) -> Branch | None:
    if if_pred is not None and unless_pred is not None:
        raise AsmError("a branch has one condition: if_pred or unless_pred")
    if ct is None:
        if if_pred is not None or unless_pred is not None:
            raise AsmError("a branch condition without a target")
        return None
    if isinstance(ct, Branch):
        return ct
    if if_pred is not None:
        return Branch(ct, CT_PRED, Pred(if_pred).n)
    if unless_pred is not None:
        return Branch(ct, CT_NOT_PRED, Pred(unless_pred).n)
    return Branch(ct)


# -- bundles ---------------------------------------------------------------------

def _mirrored_ok(slots: dict[int, Op]) -> bool:
    """``validate_bundle``: no store on channel 2 with a load on 3, nor 5 with 0."""
    for st, ld in ((2, 3), (5, 0)):
        if (st in slots and slots[st].kind == "store"
                and ld in slots and slots[ld].kind == "load"):
            return False
    return True


@dataclass
class Bundle:
    """One wide instruction: up to six operations and an optional branch."""

    ops: tuple[Op, ...] = ()
    branch: Branch | None = None
    comment: str = ""
    # filled in by __post_init__:
    slots: dict[int, Op] = field(default_factory=dict, init=False)
    lts: list[int] = field(default_factory=list, init=False)        # LTS0.. values
    lit_field: dict[Lit, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.ops = tuple(self.ops)
        self.slots = self._assign_channels()
        self._assign_literals()

    # Channel assignment: pinned ops keep their channel, the rest take the
    # lowest free channel that the operation allows (backtracking, so a load
    # never blocks the only store channel).
    def _assign_channels(self) -> dict[int, Op]:
        if len(self.ops) > 6:
            raise AsmError(f"{len(self.ops)} operations in one bundle (at most 6)")
        pinned: dict[int, Op] = {}
        free_ops: list[Op] = []
        for op in self.ops:
            if op.chan is None:
                free_ops.append(op)
            elif op.chan in pinned:
                raise AsmError(f"channel {op.chan} used twice ({pinned[op.chan].text}; {op.text})")
            else:
                pinned[op.chan] = op

        def place(i: int, used: dict[int, Op]) -> dict[int, Op] | None:
            if i == len(free_ops):
                return used if _mirrored_ok(used) else None
            op = free_ops[i]
            for c in sorted(op.channels - used.keys()):
                done = place(i + 1, {**used, c: op.on(c)})
                if done is not None:
                    return done
            return None

        slots = place(0, pinned)
        if slots is None:
            raise AsmError("no channel assignment fits (a store on channel 2/5 cannot "
                           "share the bundle with a load on channel 3/0): "
                           + "; ".join(op.text for op in self.ops))
        return dict(sorted(slots.items()))

    # Literal slots: 64-bit literals first (they need LTS<i>, LTS<i+1>, i < 3),
    # then 32-bit ones; equal literals share a slot.
    def _assign_literals(self) -> None:
        lits = list(dict.fromkeys(op.literal() for op in self.slots.values() if op.literal()))
        lits.sort(key=lambda lit: not lit.wide)
        lts: list[int] = []
        for lit in lits:
            i = len(lts)
            if lit.wide:
                lts += [lit.value & 0xFFFF_FFFF, lit.value >> 32]
                self.lit_field[lit] = _LIT64_BASE | i
            else:
                lts.append(lit.value & 0xFFFF_FFFF)
                self.lit_field[lit] = _LIT32_BASE | i
        if len(lts) > MAX_LTS:
            raise AsmError(f"literals need {len(lts)} LTS syllables (at most {MAX_LTS}): "
                           + "; ".join(op.text for op in self.slots.values()))
        self.lts = lts

    def _middle_count(self) -> int:
        """Syllables before the padding and literals: HS, SS?, ALS*, CS0?."""
        return 1 + len(self.slots) + (2 if self.branch is not None else 0)

    def _pads(self) -> tuple[bool, bool]:
        """(pad in the middle as ALES2/5, pad at the low end of the literals)."""
        odd = (self._middle_count() + len(self.lts)) % 2 == 1
        if not odd:
            return False, False
        return (True, False) if len(self.lts) == MAX_LTS else (False, True)

    @property
    def size(self) -> int:
        mid_pad, lit_pad = self._pads()
        n = self._middle_count() + mid_pad + len(self.lts) + lit_pad
        return n * 4

    def encode(self, pc: int, labels: dict[str, int]) -> bytes:
        """Bytes of this bundle placed at address ``pc``."""
        mid_pad, lit_pad = self._pads()
        middle: list[int] = []
        hs = 0
        if self.branch is not None:
            hs |= HS_SS
            middle.append(self.branch.ss())
        for chan, op in self.slots.items():
            hs |= hs_als_bit(chan)
            lit = op.literal()
            middle.append(op.encode(self.lit_field[lit] if lit else None))
        if self.branch is not None:
            try:
                target = labels[self.branch.target]
            except KeyError:
                raise AsmError(f"undefined label {self.branch.target!r}") from None
            hs |= HS_CS0
            middle.append(self.branch.cs0(target - pc))
        if mid_pad:
            middle.append(0)   # ALES5/ALES2 allocated, HS bits 25/22 clear: unused
        tail = ([0] if lit_pad else []) + list(reversed(self.lts))  # LTS0 last
        total = (1 + len(middle) + len(tail)) * 4
        if total > MAX_BUNDLE:
            raise AsmError(f"bundle of {total} bytes (at most {MAX_BUNDLE})")
        assert total % BUNDLE_ALIGN == 0 and total == self.size
        hs |= ((1 + len(middle)) - 1) << HS_MDL_SHIFT     # middle syllables - 1
        hs |= (total // BUNDLE_ALIGN - 1) << HS_LNG_SHIFT
        return struct.pack(f"<{total // 4}I", hs, *middle, *tail)

    def text(self) -> str:
        parts = [f"{op.text} @ch{c}" for c, op in self.slots.items()]
        if self.branch is not None:
            parts.append(self.branch.text())
        return "{ " + "; ".join(parts) + " }" if parts else "{ nop }"


def bundle(*ops: Op, ct: Union[str, Branch, None] = None, if_pred: int | None = None,
           unless_pred: int | None = None, comment: str = "") -> Bundle:
    """A bundle of ``ops``; ``ct=LABEL`` adds a branch (on %predN with if/unless_pred)."""
    return Bundle(ops, _branch(ct, if_pred, unless_pred), comment)


# -- program -----------------------------------------------------------------------

@dataclass
class _Label:
    name: str


@dataclass
class _Org:
    offset: int


@dataclass
class _Data:
    data: bytes
    name: str


class Program:
    """A list of bundles, labels and data, assembled in two passes.

    Offsets are relative to the start of the image; ``origin`` is the address
    the image runs at (it only matters for :meth:`address`, since branches
    are relative).
    """

    def __init__(self, origin: int = 0) -> None:
        if origin % BUNDLE_ALIGN:
            raise AsmError(f"origin {origin:#x} is not {BUNDLE_ALIGN}-byte aligned")
        self.origin = origin
        self.items: list[Union[Bundle, _Label, _Org, _Data]] = []

    def label(self, name: str) -> None:
        self.items.append(_Label(name))

    def bundle(self, *ops: Op, ct: Union[str, Branch, None] = None,
               if_pred: int | None = None, unless_pred: int | None = None,
               comment: str = "") -> Bundle:
        bnd = bundle(*ops, ct=ct, if_pred=if_pred, unless_pred=unless_pred, comment=comment)
        self.items.append(bnd)
        return bnd

    def org(self, offset: int) -> None:
        """Zero-fill up to image offset ``offset`` (an error if already past it)."""
        self.items.append(_Org(offset))

    def data(self, data: bytes, name: str = "data") -> None:
        self.items.append(_Data(bytes(data), name))

    # pass 1
    def _layout(self) -> tuple[dict[str, int], list[int]]:
        labels: dict[str, int] = {}
        starts: list[int] = []
        off = 0
        for item in self.items:
            starts.append(off)
            if isinstance(item, _Label):
                if item.name in labels:
                    raise AsmError(f"label {item.name!r} defined twice")
                labels[item.name] = off
            elif isinstance(item, _Org):
                if item.offset < off:
                    raise AsmError(f"org {item.offset:#x}: already at {off:#x}")
                off = item.offset
            elif isinstance(item, _Data):
                off += len(item.data)
            else:
                if off % BUNDLE_ALIGN:
                    raise AsmError(f"bundle at offset {off:#x} is not "
                                   f"{BUNDLE_ALIGN}-byte aligned")
                off += item.size
        return labels, starts

    def offset(self, label: str) -> int:
        """Image offset of ``label``."""
        labels, _ = self._layout()
        try:
            return labels[label]
        except KeyError:
            raise AsmError(f"undefined label {label!r}") from None

    def address(self, label: str) -> int:
        return self.origin + self.offset(label)

    # pass 2
    def assemble(self) -> bytes:
        labels, starts = self._layout()
        addrs = {k: self.origin + v for k, v in labels.items()}
        out = bytearray()
        for item, start in zip(self.items, starts):
            if len(out) < start:
                out += bytes(start - len(out))
            if isinstance(item, _Data):
                out += item.data
            elif isinstance(item, Bundle):
                out += item.encode(self.origin + start, addrs)
        return bytes(out)

    def listing(self) -> str:
        """Human-readable listing: address, bytes and operations of every item."""
        labels, starts = self._layout()
        addrs = {k: self.origin + v for k, v in labels.items()}
        lines: list[str] = []
        for item, start in zip(self.items, starts):
            addr = self.origin + start
            if isinstance(item, _Label):
                lines.append(f"{item.name}:")
            elif isinstance(item, _Org):
                lines.append(f"        .org {item.offset:#x}")
            elif isinstance(item, _Data):
                lines.append(f"  {addr:#012x}  .data {item.name} ({len(item.data)} bytes)")
            else:
                raw = item.encode(addr, addrs)
                words = " ".join(f"{w:08x}" for w in struct.unpack(f"<{len(raw) // 4}I", raw))
                note = f"    # {item.comment}" if item.comment else ""
                lines.append(f"  {addr:#012x}  {item.text()}{note}")
                lines.append(f"                [{words}]")
        return "\n".join(lines)


def words(data: bytes) -> list[int]:
    """Little-endian 32-bit syllables of encoded bytes (for tests and listings)."""
    return list(struct.unpack(f"<{len(data) // 4}I", data))

