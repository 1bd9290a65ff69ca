"""The run configuration: one frozen pydantic tree, YAML + dotted overrides, canonical hashes, per-stage slices.

Resolution order: defaults → YAML file → dotted overrides (``quant.calib.num_samples=64``; values parsed with
``yaml.safe_load``) → validation. Unknown keys are errors that name the key and list close matches.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .algorithms.scheme import FORMATS
from .sam2.variants import VARIANT_NAMES

__all__ = ["RunConfig", "QuantCfg", "ConfigError", "load_config", "config_hash", "canonical_json", "group_size_of"]


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that names the key and the fix."""


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelCfg(_Node):
    name: Literal[VARIANT_NAMES] = "tiny"  # type: ignore[valid-type]
    device: Literal["cuda", "cpu"] = "cuda"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    path: str = ""            # local transformers-format directory; overrides the hub id
    revision: str = "main"    # hub revision (branch, tag or commit)
    random_init: bool = False  # real architecture, seeded random weights (offline work only)
    arch: dict[str, Any] = Field(default_factory=dict)  # random_init only: Sam2HieraDetConfig overrides (tests)

    @model_validator(mode="after")
    def _arch_needs_random(self):
        if self.arch and not self.random_init:
            raise ValueError("model.arch overrides need model.random_init: true (they change the architecture)")
        if self.path and self.random_init:  # never ignore a checkpoint the user named and run random weights
            raise ValueError(f"model.path {self.path} is set but model.random_init is true, which would ignore it; "
                             f"add --model.random_init false to quantize that checkpoint")
        return self


class CacheCfg(_Node):
    root: str = "./cache/sam2"  # a local folder, or an fsspec URL shared by workers: s3://bucket/prefix, gs://, az://
    local: str = ""             # with a URL root: this worker's read-through cache (default ~/.cache/sam2ptq)
    local_max_gb: float = Field(50.0, gt=0)  # bound of that cache
    lease_seconds: float = Field(60.0, ge=60)  # URL root + Prefect API: a killed builder's stage lease frees after this
    io_timeout_seconds: float = Field(60.0, gt=0)  # URL root: read timeout per request (3 attempts), then one error


class CalibCfg(_Node):
    path: str = ""
    num_samples: int = Field(128, ge=1)
    batch_size: int = Field(1, ge=1)
    image_size: int = 1024
    sample_tokens: int = Field(4096, ge=1)  # token reservoir per layer (smoothing search, low-rank, errors)
    # oneshot: every layer calibrated on the float model's inputs; sequential: block i on the inputs the already
    # quantized blocks 0..i-1 produce (pipeline/sequential.py)
    mode: Literal["oneshot", "sequential"] = "oneshot"

    @field_validator("image_size")
    @classmethod
    def _mult32(cls, v):
        if v < 64 or v % 32:
            raise ValueError(f"image_size must be a multiple of 32 and ≥ 64, got {v}")
        return v


class GPTQCfg(_Node):
    damp_percentage: float = Field(0.01, gt=0)
    block_size: int = Field(128, ge=1)
    num_inv_tries: int = Field(250, ge=1)
    act_order: bool = True  # sweep columns by decreasing H_ii, groups static (DeepCompressor); benchmarks/RESULTS.md


class LowRankCfg(_Node):
    rank: int = Field(32, ge=0)
    exclusive: bool = False
    num_iters: int = Field(100, ge=1)  # alternating fit, stops at the first iteration that does not improve
    randomized: bool = True


def _group_shapes(v):
    if len(v) != 1 or len(v[0]) != 2 or v[0][0] != 1 or not (v[0][1] == -1 or v[0][1] > 0):
        raise ValueError(f"group_shapes must be [[1, G]] with G > 0 or -1 (one level), got {v}")
    return v


class WgtsCfg(_Node):
    dtype: Literal[tuple(FORMATS)] = "uint4"  # type: ignore[valid-type]  (algorithms/scheme.py::FORMATS)
    group_shapes: list[list[int]] = Field(default_factory=lambda: [[1, 128]])
    kernel_gptq: GPTQCfg | None = Field(default_factory=GPTQCfg)
    low_rank: LowRankCfg | None = None
    scale_dtype: Literal["float16", "bfloat16"] | None = None  # round scales/smooth/branch to it (16-bit exports)
    _gs = field_validator("group_shapes")(classmethod(lambda cls, v: _group_shapes(v)))


class IptsCfg(_Node):
    dtype: Literal[tuple(FORMATS)] | None = "uint8"  # type: ignore[valid-type]
    group_shapes: list[list[int]] = Field(default_factory=lambda: [[1, -1]])
    # static per-tensor activations, as graph runtimes run them (uint8 with a zero point, ranges observed on the
    # quantized model: ``static_method`` mse (the clipped range with the least squared error) or minmax, over
    # ``static_images`` calibration images); the whole pipeline then calibrates and evaluates that format
    static: bool = False
    static_method: Literal["mse", "minmax"] = "mse"
    static_images: int = Field(8, ge=1)
    # the attention matmul Q·Kᵀ with static sint8 per-tensor query and key (sam2/attention.py), observed with the
    # linears' ranges: in the ONNX file always, in the pipeline's evaluation with ``static``
    attention: bool = False
    # SVDQuant: mlp.proj_out's input (after GELU) + 0.171875, quantized unsigned (uint4 for sint4), shift in the
    # bias; such layers are never rotated (a rotation would make the input signed again)
    gelu_shift: bool = False
    _gs = field_validator("group_shapes")(classmethod(lambda cls, v: _group_shapes(v)))

    @model_validator(mode="after")
    def _static_is_8bit(self):
        if self.static and not (self.dtype and FORMATS[self.dtype].bits == 8):
            raise ValueError(f"static activations are 8-bit per tensor (uint8, as graph runtimes run them), but dtype "
                             f"is {self.dtype}; use dtype uint8 or sint8 with static: true, or static: false")
        return self

    @model_validator(mode="after")
    def _attention_is_8bit(self):
        if self.attention and not (self.dtype and FORMATS[self.dtype].bits == 8):
            raise ValueError(f"attention quantizes Q·Kᵀ's inputs static 8-bit, beside 8-bit activations, but dtype "
                             f"is {self.dtype}; use dtype sint8 or uint8 with attention: true, or attention: false")
        return self

    @model_validator(mode="after")
    def _shift_needs_signed(self):
        if self.gelu_shift and not (self.dtype and FORMATS[self.dtype].signed):
            raise ValueError(f"gelu_shift turns signed activations unsigned, but dtype is {self.dtype}; use "
                             "sint4/sint8 with it, or gelu_shift: false (uint formats have a zero point already)")
        return self


class SmoothProjCfg(_Node):
    granularity: Literal["Layer"] = "Layer"
    strategy: Literal["GridSearch", "Manual"] = "GridSearch"
    num_grids: int = Field(20, ge=2)
    alpha: float = Field(0.5, ge=-3, le=1)  # values ≤ 0 and β < 0 select grid families (algorithms/smoothing.py)
    beta: float = Field(-2.0, ge=-3, le=1)


class SmoothCfg(_Node):
    proj: SmoothProjCfg | None = Field(default_factory=SmoothProjCfg)


class RotationCfg(_Node):
    transforms: list[Literal["hadamard"]] = Field(default_factory=lambda: ["hadamard"])  # the one transform built
    random: bool = False
    # auto: a layer keeps the rotation only where it lowers that layer's quantized output error on the token
    # sample (decided together with smoothing); all: rotate every quantized linear
    mode: Literal["auto", "all"] = "auto"

    @field_validator("transforms")
    @classmethod
    def _one_hadamard(cls, v):
        if v != ["hadamard"]:  # [] or a repeat would be accepted and not change anything: say how to get what
            raise ValueError("transforms must be [hadamard] (the online Hadamard rotation); use rotation: null "
                             "to turn rotation off")
        return v


class VideoEvalCfg(_Node):
    """The quantized encoder inside SAM2's video predictor on one clip, against the float tracker (J&F per object
    and frame, per-frame time): the evaluate_video stage."""
    clip: str                                  # a video file (anything FFmpeg decodes) or a folder of frames
    objects: list[str] = Field(min_length=1)   # one prompt per object on prompt_frame, predict --object's syntax:
    #                                            "box=X1,Y1,X2,Y2", "point=X,Y negative=X,Y" (pixels of the clip)
    num_frames: int = Field(8, ge=2)           # frames tracked from prompt_frame on
    prompt_frame: int = Field(0, ge=0)
    strip_frames: int = Field(4, ge=1)         # frames shown in the report's strip


class EvalCfg(_Node):
    path: str = ""          # held-out image folder; empty = a seeded split disjoint from the calibration images
    num_samples: int = Field(8, ge=1)
    points_per_side: int = Field(4, ge=1)
    num_overlays: int = Field(3, ge=0)
    annotations: str = ""   # optional COCO instances JSON: GT-box prompts, mIoU vs GT masks (annotated images only)
    regression_threshold: float = Field(0.5, ge=0)  # allowed drop of mIoU vs FP (points) against the last run
    regression_across_models: bool = False  # compare with runs of other model weights too (default: new weights,
    #                                         new baseline)
    video: VideoEvalCfg | None = None  # track a clip with the quantized encoder (the report's "Video" section)


class MixedCfg(_Node):
    """Mixed precision from measured sensitivity: the most sensitive layers fall back to ``fallback``."""
    fallback: Literal["w8a8", "fp16"] = "w8a8"
    budget_bits: float | None = Field(None, gt=0)  # average weight bits over the quantized layers (by parameters)
    num_layers: int | None = Field(None, ge=0)     # or: this many most sensitive layers fall back
    layers: list[str] = Field(default_factory=list)  # or: exactly these (the export records the choice here)
    num_images: int = Field(2, ge=1)               # calibration images the sensitivity stage runs

    @model_validator(mode="after")
    def _one_policy(self):
        given = [k for k in ("budget_bits", "num_layers") if getattr(self, k) is not None] + (
            ["layers"] if self.layers else [])
        if len(given) != 1:
            raise ValueError("set exactly one of budget_bits (average weight bits), num_layers or layers, got "
                             + (", ".join(given) or "none"))
        return self


class QuantCfg(_Node):
    calib: CalibCfg = Field(default_factory=CalibCfg)
    wgts: WgtsCfg = Field(default_factory=WgtsCfg)
    ipts: IptsCfg = Field(default_factory=IptsCfg)
    smooth: SmoothCfg | None = None
    rotation: RotationCfg | None = None
    eval: EvalCfg = Field(default_factory=EvalCfg)
    skip: list[str] = Field(default_factory=list)  # fnmatch patterns of trunk linears kept in 16-bit
    mixed: MixedCfg | None = None  # mixed precision from the sensitivity stage (pipeline/stages.py)

    @model_validator(mode="after")
    def _static_alone(self):
        if self.ipts.static and (self.mixed is not None or self.calib.mode == "sequential"):
            raise ValueError("quant.ipts.static: true works with one-shot calibration and without quant.mixed (the "
                             "sensitivity trials and the block walk run dynamic activations); drop quant.mixed or "
                             "set quant.calib.mode: oneshot")
        return self


class OutputCfg(_Node):
    root: str = "./outputs/sam2"
    job: str = ""  # default: hiera_<name>_<wbits>a<abits>


class OnnxCfg(_Node):
    """The ONNX export of the quantized encoder for graph runtimes (export/onnx.py): int8 QDQ weights from the
    pipeline's codes, static per-tensor 8-bit activations from the calibration ranges."""
    runtime: Literal["auto", "openvino", "onnxruntime"] = "auto"  # what evaluation and latency run
    # (auto: the fastest installed; ONNX Runtime on an x86 CPU without VNNI)
    latency_runs: int = Field(5, ge=1)  # timed encoder runs (median) after 2 warm-up runs, torch fp32 and runtime
    precision: Literal["auto", "f32"] = "auto"  # OpenVINO's float ops: its default (bf16 where the CPU has it) or f32


class RunConfig(_Node):
    model: ModelCfg = Field(default_factory=ModelCfg)
    cache: CacheCfg = Field(default_factory=CacheCfg)
    quant: QuantCfg = Field(default_factory=QuantCfg)
    output: OutputCfg = Field(default_factory=OutputCfg)
    save_model: bool = False
    convert_nunchaku: bool = False
    onnx: OnnxCfg | None = None  # set ({} for the defaults) to export and run the encoder on a graph runtime
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _export_scale_dtype(cls, data):
        """--convert-nunchaku stores 16-bit scales: unless a scale dtype is set, quantize with float16 scales so the
        codes are computed with exactly the values the export holds."""
        if isinstance(data, dict) and data.get("convert_nunchaku"):
            wg = (data.get("quant") or {}).get("wgts") or {}
            if isinstance(wg, dict) and wg.get("scale_dtype") is None:
                q = dict(data.get("quant") or {})
                q["wgts"] = {**wg, "scale_dtype": "float16"}
                data = {**data, "quant": q}
        return data

    def job_name(self) -> str:
        if self.output.job:
            return self.output.job
        a = FORMATS[self.quant.ipts.dtype].bits if self.quant.ipts.dtype else 16
        return f"hiera_{self.model.name.replace('-', '_')}_w{FORMATS[self.quant.wgts.dtype].bits}a{a}"


def group_size_of(group_shapes: list[list[int]]) -> int:
    return group_shapes[0][1]


def _known_keys(model: type[BaseModel], prefix: str = "") -> dict[str, type | None]:
    out = {}
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(f.annotation)
        out[key] = sub
        if sub is not None:
            out.update(_known_keys(sub, key + "."))
    return out


def _submodel(ann) -> type[BaseModel] | None:
    for a in getattr(ann, "__args__", (ann,)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _check_keys(d: dict, prefix: str = "") -> None:
    known = _known_keys(RunConfig)
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        if isinstance(v, dict) and known[key] is not None:
            _check_keys(v, key + ".")


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        if not isinstance(cur.get(p), dict):
            cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value


def _where(e: yaml.YAMLError) -> str:
    m = getattr(e, "problem_mark", None)
    return f" at line {m.line + 1}, column {m.column + 1}" if m is not None else ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    return getattr(e, "problem", None) or str(e).splitlines()[0]


def load_config(source: str | Path | dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from a YAML path or dict plus ``key=value`` overrides. Raises ConfigError (one line)."""
    if isinstance(source, (str, Path)) and str(source):
        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML{_where(e)}: {_yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    else:
        data = json.loads(json.dumps(source or {}))
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key=value, e.g. quant.calib.num_samples=64")
        k, v = ov.split("=", 1)
        try:
            value = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {k.strip()} has a value that is not valid YAML ({_yaml_problem(e)}): {v!r}; "
                              f"quote it or fix it") from None
        _set_dotted(data, k.strip().lstrip("-").replace("-", "_"), value)
    _check_keys(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))
        raise ConfigError(f"invalid value for '{loc}': {err['msg']}") from None


def canonical_json(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON. For a RunConfig only what changes the numbers counts: model, quant, seed
    (not where the cache and outputs live, nor which extra files are written)."""
    if isinstance(obj, RunConfig):
        obj = obj.model_dump(mode="json", include={"model", "quant", "seed"})
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
