"""The per-layer quantization scheme: one typed record of how a layer is quantized, chosen by name patterns.

A ``LayerScheme`` says what a layer ships: its weight format and group, its activation format and group, the input
shift (SVDQuant's unsigned activations), whether it may be rotated, its low-rank branch rank, and which fallback
(if any) moved it off the run's format. ``SchemeRule`` pairs target patterns with a scheme, the way
compressed-tensors pairs a ``QuantizationScheme`` with ``targets``; ``resolve`` applies the matching rules in order,
so later rules (the GELU shift, a mixed-precision fallback) override the run's base; a fallback rule derives its
scheme from the one the layer had.

Pure Python, no torch: the config layer builds the rules (``sam2ptq_core/schemes.py``) and every consumer
(calibration, QuantLinear, mixed precision, the exports and their readers, the report) reads the resolved records.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

from .mixed_precision import WeightFormat

__all__ = ["QDType", "FORMATS", "qdtype", "LayerScheme", "SchemeRule", "resolve", "matches", "tally", "GELU_SHIFT"]

# SVDQuant / nunchaku: the input of the second MLP layer (after GELU, whose minimum is ≈ −0.16997) is shifted by
# this constant, so it is ≥ 0 and quantized unsigned; the shift is folded into the layer's bias.
GELU_SHIFT = 0.171875


@dataclass(frozen=True)
class QDType:
    """An integer format: ``name``, ``signed`` and the code range [qmin, qmax]."""
    name: str
    signed: bool
    bits: int
    qmin: int
    qmax: int


# The integer formats, by the names configs and schemes use (quantizers.py implements them; config.py's dtype keys
# accept exactly these names).
FORMATS = {
    "sint4": QDType("sint4", True, 4, -7, 7),
    "sint8": QDType("sint8", True, 8, -127, 127),
    "uint4": QDType("uint4", False, 4, 0, 15),
    "uint8": QDType("uint8", False, 8, 0, 255),
}


def qdtype(name: str) -> QDType:
    """Look up a dtype by name; raises ValueError naming the supported ones."""
    if name not in FORMATS:
        raise ValueError(f"unknown quantization dtype {name!r}; supported: {', '.join(FORMATS)}")
    return FORMATS[name]


@dataclass(frozen=True)
class LayerScheme:
    """How one linear is quantized. ``w_dtype`` None: the layer stays float (16-bit in the exports); ``a_dtype``
    None: float activations. Groups are input channels per scale (-1: one per row / token). ``shift``: the input
    arrives shifted by this constant and is quantized with the unsigned format ``a_dtype`` (never rotated).
    ``rotate``: the layer may take the run's Hadamard rotation (the smooth stage keeps it where it helps, in
    ``rotation.mode: auto``). ``fallback``: "w8a8" / "fp16" when mixed precision moved the layer off the run's
    format, else None."""
    w_dtype: str | None
    w_group: int = -1
    a_dtype: str | None = None
    a_group: int = -1
    shift: float = 0.0
    rotate: bool = False
    rank: int = 0
    fallback: str | None = None
    a_static: bool = False

    @property
    def quantized(self) -> bool:
        return self.w_dtype is not None

    @property
    def bits(self) -> int:
        """Bits per weight code (16 for a float layer)."""
        return qdtype(self.w_dtype).bits if self.w_dtype else 16

    def weight_format(self) -> WeightFormat:
        """What the weight costs as shipped (``mixed_precision.weight_bytes``)."""
        if not self.quantized:
            return WeightFormat(16)
        return WeightFormat(self.bits, self.w_group, not qdtype(self.w_dtype).signed, self.rank)

    def shifted(self, shift: float) -> LayerScheme:
        """This scheme for an input shifted by ``shift``: the unsigned twin of the activation format (sint4 →
        uint4), no rotation (it would spoil the sign)."""
        a = None if self.a_dtype is None else qdtype(self.a_dtype)
        twin = None if a is None else a.name if not a.signed else next(
            f.name for f in FORMATS.values() if not f.signed and f.bits == a.bits)
        return replace(self, shift=shift, rotate=False, a_dtype=twin)

    def w8a8(self) -> LayerScheme:
        """Mixed precision's W8A8 fallback of this layer: sint8 per-channel weights, sint8 per-token activations,
        no branch, no shift; the layer's rotation policy kept (the smoothing search ran under it)."""
        return LayerScheme("sint8", -1, "sint8", -1, 0.0, self.rotate, 0, "w8a8")

    def static8(self) -> LayerScheme:
        """This layer with static activations, as graph runtimes run them (the ONNX export, ``quant.ipts.static``):
        8-bit per tensor with zero point 0 (``qdq.STATIC_DTYPES``): sint8 symmetric, uint8 for an input shifted to
        be ≥ 0 (after GELU), with parameters calibrated on the quantized model (``qdq.RangeObserver``); weights as
        they are."""
        if self.a_dtype is None:
            return self
        return replace(self, a_dtype="uint8" if self.shift else "sint8", a_group=-1, a_static=True)

    def fp16(self) -> LayerScheme:
        """Mixed precision's float fallback: the layer is not quantized."""
        return LayerScheme(None, fallback="fp16")

    def label(self) -> str:
        """A short name for reports: W4(g64)A4(g64) +shift 0.171875, rank 32, rotated."""
        if not self.quantized:
            return "float (16-bit)"

        def fmt(d, g):
            return f"{d}" + (f"/g{g}" if g > 0 else "")
        parts = [f"weights {fmt(self.w_dtype, self.w_group)}",
                 f"acts {fmt(self.a_dtype, self.a_group) if self.a_dtype else 'float'}"]
        if self.shift:
            parts.append(f"input +{self.shift:g}")
        if self.rank:
            parts.append(f"rank {self.rank}")
        if self.rotate:
            parts.append("may rotate")
        if self.fallback:
            parts.append(f"{self.fallback} fallback")
        if self.a_static:
            parts.append("static per-tensor activations")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerScheme:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown layer scheme fields {sorted(unknown)}: written by a newer sam2ptq?")
        return cls(**d)


def matches(pattern: str, name: str) -> bool:
    """fnmatch pattern, or ``re:<regex>`` (full match), as compressed-tensors' targets."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


DERIVED = ("w8a8", "fp16")  # LayerScheme methods a rule may apply to the scheme a layer has so far


@dataclass(frozen=True)
class SchemeRule:
    """For the layers any of ``targets`` matches: ``scheme``, or ``derive`` (one of ``DERIVED``) applied to the
    scheme earlier rules gave the layer (a fallback keeps what it does not change). ``why`` names the config key
    that made the rule."""
    targets: tuple[str, ...]
    scheme: LayerScheme | None = None
    derive: str | None = None
    why: str = ""

    def __post_init__(self):
        if (self.scheme is None) == (self.derive is None) or (self.derive and self.derive not in DERIVED):
            raise ValueError(f"a rule gives a scheme or derives one of {DERIVED}, not {self.scheme}, {self.derive}")

    def applies(self, name: str) -> bool:
        return any(matches(p, name) for p in self.targets)

    def apply(self, earlier: LayerScheme | None) -> LayerScheme:
        if self.scheme is not None:
            return self.scheme
        if earlier is None:
            raise KeyError(f"rule {self.why or self.targets} derives {self.derive} but no earlier rule matched")
        return getattr(earlier, self.derive)()

    def to_dict(self) -> dict:
        return {"targets": list(self.targets), "why": self.why,
                **({"scheme": self.scheme.to_dict()} if self.scheme else {"derive": self.derive})}


def resolve(rules: Iterable[SchemeRule], names: Iterable[str]) -> dict[str, LayerScheme]:
    """{name: its scheme}: the rules applied in order, each matching rule replacing (or deriving from) what the
    earlier ones gave; a name no rule matches is an error."""
    rules = list(rules)
    out = {}
    for n in names:
        got = None
        for r in rules:
            if r.applies(n):
                got = r.apply(got)
        if got is None:
            raise KeyError(f"no quantization scheme rule matches layer {n}")
        out[n] = got
    return out


def tally(schemes: dict[str, LayerScheme]) -> list[dict]:
    """The distinct per-layer schemes of a run, with how many layers have each (first seen first)."""
    out: dict = {}
    for k, s in schemes.items():
        out.setdefault(s, []).append(k)
    return [{"scheme": s.label(), "layers": len(v), "example": v[0]} for s, v in out.items()]
