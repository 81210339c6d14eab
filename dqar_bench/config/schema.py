"""The suite file's shape as typed models that mirror its YAML, nesting and all.

One definition of what a suite file may hold: its fields (the reader's allowed keys are
read from here, so the reader and the schema cannot drift apart), their types and
defaults, and a line of help each. `dqar-bench schema` prints it as JSON Schema, so an
editor completes and checks suite files; a suite can be written in Python with the same
models (`dqar_bench.Suite`, `dqar_bench.Case`).

These models check shape only (names, types, which keys). What needs the model, the
installed parts or files on disk (a class label out of range, an unknown gate, a missing
weights file) is checked by `dqar_bench.config.suite`, which also words every error as the
one line a user reads: file, field, what is wrong, did-you-mean.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dqar_bench.core.parts import KINDS
from dqar_bench.core.plugins import Registry

PositiveInt = Annotated[int, Field(ge=1)]
IntOrList = int | list[int]
Mode = Literal["eager", "compile", "cudagraph"]


class _Spec(BaseModel):
    """Unknown keys are refused, as the reader refuses them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelSpec(_Spec):
    """A model by name (allowed to download) or a saved diffusers pipeline folder."""

    name: str | None = Field(None, description="A built-in model, a checkpoint id or a local folder.")
    download: bool = Field(False, description="Allow downloading the checkpoint from the Hub.")
    pipeline: str | None = Field(None, description="Run a diffusers pipeline folder (or id) through its own pipeline; give it alone.")


class SamplerSpec(_Spec):
    name: str | None = Field(None, description="The sampler (default: the model's own).")
    steps: PositiveInt = Field(20, description="Denoising steps per sampling call.")
    guidance_scale: float = Field(4.0, ge=0, description="Classifier-free guidance scale; 1 or less turns it off.")


class PromptFileSpec(_Spec):
    file: str = Field(description="A prompt file, taken from the suite's folder.")
    count: PositiveInt | None = Field(None, description="How many of its prompts (default: all).")


class TimingSpec(_Spec):
    warmup: int = Field(1, ge=0, description="Untimed sampling calls per case before timing.")
    repeats: PositiveInt = Field(3, description="Timed sampling calls per case.")
    per_step: bool = Field(True, description="Time each model call inside a sampling call.")
    nvml_interval_ms: float = Field(10.0, gt=0, description="Milliseconds between NVML power samples.")
    order: Literal["interleaved", "blocked"] = Field("interleaved", description="Repeats in rounds of every case, or each case's back to back.")
    round_seed: int = Field(0, description="Seed of the case order in each round.")
    clock: Literal["wall", "cpu"] = Field("wall", description="What times a call: wall clock, or the process's CPU time (steadier on a busy CPU).")


class FidSpec(_Spec):
    num_images: PositiveInt = Field(description="Images per case (e.g. 50000).")
    reference_stats: str | None = Field(None, description="A .npz of the reference set's FID statistics.")


class LpipsSpec(_Spec):
    backbone: str = Field(description="torchvision's ImageNet checkpoint of the net.")
    net: Literal["alex", "vgg"] = "alex"
    linear: str | None = Field(None, description="LPIPS' linear-layer file.")


class ClipSpec(_Spec):
    weights: str = Field(description="A local CLIP checkpoint folder.")


class QualitySpec(_Spec):
    fid: int | FidSpec = Field(0, description="Images per case for FID / IS / KID (0: off), or {num_images, reference_stats}.")
    reference: str = Field("baseline", description="'baseline', a shipped reference set, an image folder or a .npz of statistics.")
    metrics: Literal["fid", "kid", "isc"] | list[Literal["fid", "kid", "isc"]] = ["fid", "kid", "isc"]
    feature_extractor: str = "inception-v3-compat"
    inception_weights: str | None = Field(None, description="Local weights of the feature extractor.")
    lpips: LpipsSpec | None = None
    clip: ClipSpec | None = None
    classifier: str | None = Field(None, description="A shipped classifier that scores class accuracy.")


class CompileSpec(_Spec):
    backend: str = "inductor"
    mode: str | None = None
    max_graphs: PositiveInt = Field(64, description="Compiled graphs / CUDA graphs per case before steps run eagerly.")


class ParallelSpec(_Spec):
    """Context parallelism: one of `ulysses` or `ring`, with the number of ranks."""

    ulysses: PositiveInt | None = None
    ring: PositiveInt | None = None


class ResolutionSpec(_Spec):
    height: PositiveInt
    width: PositiveInt
    frames: PositiveInt | None = Field(None, description="For a video model.")


class PartRef(BaseModel):
    """A part with its parameters: `{name: interval, every: 2}`."""

    model_config = ConfigDict(extra="allow")

    name: str


Part = str | PartRef


class SweepSpec(_Spec):
    parameter: str = Field(pattern=r"^(scheduler|gate|cache|quantizer)\.[^.]+$", description="kind.parameter, e.g. gate.every.")
    values: list[Any] = Field(min_length=1)


class CaseSpec(_Spec):
    """One row of the table: no parts is the untouched model."""

    name: str = Field(min_length=1)
    description: str = ""
    scheduler: Part | None = None
    gate: Part | None = None
    cache: Part | None = None
    quantizer: Part | None = None
    sweep: SweepSpec | None = None
    calibration: str | None = Field(None, description="A calibration file for this case's `{calibrated: X}` parameters (`dqar-bench calibrate`); default: the suite's.")
    execution: Mode | list[Mode] | None = None
    parallel: ParallelSpec | None = None
    diffusers_hook: dict[str, Any] | None = Field(None, alias="diffusers-hook", description="One of diffusers' cache hooks, {name, ...its config}, instead of parts.")
    cache_dit: dict[str, Any] | None = Field(None, alias="cache-dit", description="The cache-dit library's cache on the model, {name, ...its options}, instead of parts (the `cache-dit` extra).")


class SuiteSpec(_Spec):
    """A suite file: one model (or a list of them), its sampler and inputs, and the cases."""

    name: str
    description: str = ""
    model: str | ModelSpec | list[str | ModelSpec] = Field("dit-tiny", description="A model, {name, download}, {pipeline}, or a list (one suite each).")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    class_labels: IntOrList = [0, 1]
    prompt_lengths: IntOrList | None = Field(None, description="Synthetic captions of these token counts (a text model).")
    prompts: list[str] | PromptFileSpec | None = Field(None, description="Captions, or {file, count} (a text model).")
    prompt_embeddings: str | None = Field(None, description="A .safetensors file of caption embeddings (a text model).")
    seeds: IntOrList = [0]
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    threads: PositiveInt = Field(1, description="CPU threads torch may use.")
    calibration: str | None = Field(None, description="A calibration file (`dqar-bench calibrate SUITE -o FILE`) that `{calibrated: 0.5}` and `calibrated` parameters read.")
    timing: TimingSpec = Field(default_factory=TimingSpec)
    baseline: str = Field("baseline", description="The case every other is compared with.")
    probe_queries: PositiveInt = 16
    quality: QualitySpec = Field(default_factory=QualitySpec)
    execution: Mode | list[Mode] = "eager"
    compile: CompileSpec | None = None
    parallel: ParallelSpec | None = None
    cases: list[CaseSpec] = Field(min_length=1)
    resolution: ResolutionSpec | None = None

    def to_yaml_data(self) -> dict[str, Any]:
        """The mapping a suite file would hold: what was set, under the file's key names."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a mapping of this shape may hold, as the file spells them, in order."""
    return tuple(f.alias or name for name, f in model.model_fields.items())


def default(model: type[BaseModel], name: str) -> Any:
    """A field's default: one definition for the reader, the schema and the Python API."""
    return model.model_fields[name].get_default(call_default_factory=True)


def suite_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema of a suite file; with a registry, each part kind names its installed parts."""
    schema = SuiteSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dqar-bench suite"
    if registry is not None:
        case = schema["$defs"]["CaseSpec"]["properties"]
        for kind in KINDS:
            names = registry.names(kind)
            case[kind] = {
                "description": f"A {kind}: its name, or {{name, ...its parameters}} (`dqar-bench plugins` lists them).",
                "anyOf": [
                    {"type": "string", "enum": names},
                    {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "enum": names}}},
                    {"type": "null"},
                ],
            }
    return schema

