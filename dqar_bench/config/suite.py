"""Suite files: YAML in, a validated `Suite` out, or one clear error.

Every error names the file, the case (where there is one), the field and what to do,
and is raised as `SuiteError` so the CLI prints it on one line and exits with status 2.
Validation builds every part with its parameters, so whatever a part itself refuses
(a fraction outside [0, 1], an unknown mode) is refused here, before anything runs; the
built parts travel in the cases (`part_spec`), so nothing builds them again. The fields a
mapping may hold and their defaults come from the file's typed shape (`schema`), and the
validated `Suite` keeps the file as that typed model (`Suite.spec`); its flat fields are
what validation derived (defaults, expanded cases, resolved paths) and what the run reads.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dqar_bench.config import calibration as calib
from dqar_bench.config.calibration import MARKER, CalibrationError, Tag, config_hash
from dqar_bench.config.part_spec import PartSpec, bind
from dqar_bench.config.schema import (
    CaseSpec,
    ClipSpec,
    CompileSpec,
    LpipsSpec,
    ModelSpec,
    PromptFileSpec,
    QualitySpec,
    SamplerSpec,
    SuiteSpec,
    SweepSpec,
    TimingSpec,
    default,
    keys,
)
from dqar_bench.core.errors import DqarError, ModelError, SuiteError
from dqar_bench.core.parts import KINDS
from dqar_bench.core.plugins import Registry, get_registry
from dqar_bench.core.weights import check_weights_file
from dqar_bench.measure.classify import CLASSIFIERS, check_classifier
from dqar_bench.measure.clip_score import check_clip_checkpoint
from dqar_bench.measure.fid_stats import parse_fid_config
from dqar_bench.measure.fidelity import REFERENCE_SETS, WEIGHTS_OPTION, check_registered, check_weights
from dqar_bench.measure.lpips import NETS as LPIPS_NETS
from dqar_bench.measure.lpips import LpipsConfig, check_lpips_files
from dqar_bench.measure.quality import QualityConfig
from dqar_bench.measure.timing import CLOCKS
from dqar_bench.model import families
from dqar_bench.model.loaded import DIT_SCHEDULER_CONFIG, local_json
from dqar_bench.model.models import BUILTIN_MODELS, default_sampler, model_config, model_family, model_prediction, num_classes, offline_problem
from dqar_bench.model.resolution import Resolution, check_for_model, parse_resolution
from dqar_bench.model.sampling import FLOW_SAMPLERS, SAMPLERS, sampler_refusal
from dqar_bench.strategy.context_parallel import Parallel, parse_parallel
from dqar_bench.strategy.execution import MODES, ExecutionOptions

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""torch.Generator.manual_seed's range: a seed outside it fails every case at its first draw."""
NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
"""A plain number written as text: YAML 1.1 reads `1e6` as a string (it wants `1.0e+6`)."""
DEFAULT_PARTS: dict[str, str] = {"scheduler": "all", "gate": "never", "cache": "attention-output", "quantizer": "none"}

# The keys each mapping may hold, read from the typed shape of the file (`config.schema`),
# so that the reader, the JSON Schema and the Python API name the same fields.
TOP_KEYS = keys(SuiteSpec)
CASE_KEYS = keys(CaseSpec)
COMPILE_KEYS = keys(CompileSpec)
TEXT_KEYS = ("prompt_lengths", "prompts", "prompt_embeddings")
SAMPLER_KEYS = keys(SamplerSpec)
TIMING_KEYS = keys(TimingSpec)
TIMING_ORDERS = ("interleaved", "blocked")
QUALITY_KEYS = keys(QualitySpec)
LPIPS_KEYS = keys(LpipsSpec)
CLIP_KEYS = keys(ClipSpec)
PROMPT_FILE_KEYS = keys(PromptFileSpec)
FIDELITY_METRICS = ("fid", "kid", "isc")
MODEL_KEYS = keys(ModelSpec)
EXPANSION_FACTOR = 10
MIN_EXPANSION_LIMIT = 100_000
"""Without aliases a suite holds fewer values and characters than its file has characters;
one that expands past ten times its file (and past this floor) is an alias bomb."""
SWEEP_KEYS = keys(SweepSpec)


@dataclass(frozen=True)
class Case:
    """One row of the table. No parts means the untouched model.

    A suite whose cases run in more than one execution mode has one case per mode, named
    `<name>@<mode>`; `base` keeps the name as written.
    """

    name: str
    parts: dict[str, PartSpec]
    description: str = ""
    execution: str = "eager"
    base: str = ""
    parallel: Parallel | None = None
    """Context parallelism over several ranks (`dqar_bench.strategy.context_parallel`); None: one rank."""
    hook: dict[str, Any] | None = None
    """`diffusers-hook`: one of diffusers' cache hooks, {name, config} (`dqar_bench.strategy.diffusers_hooks`), instead of parts."""
    calibrated: dict[str, Any] = field(default_factory=dict)
    """The parameters that read a calibration, as written: {"gate.threshold": 0.5, "gate.mag_ratios": "calibrated"}
    (`dqar_bench.config.calibration`); their values in `parts` are the calibration's."""
    calibration_key: str | None = None
    """The digest of the case's parts as written, without its threshold: what a calibrated threshold was found for."""
    calibration_digest: str | None = None
    """The digest of the calibration entry the case read (part of its identity); None: it read none."""

    @property
    def untouched(self) -> bool:
        return not self.parts and self.hook is None

    @property
    def base_name(self) -> str:
        return self.base or self.name


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    model: str
    allow_download: bool
    sampler: str
    steps: int
    guidance_scale: float
    class_labels: list[int]
    seeds: list[int]
    device: str
    dtype: str
    warmup: int
    repeats: int
    baseline: str
    probe_queries: int
    cases: list[Case]
    content_hash: str
    description: str = ""
    quality: QualityConfig = field(default_factory=QualityConfig)
    per_step: bool = True
    """Time each model call inside a sampling call (a forward pre-hook; no extra sync)."""
    nvml_interval_s: float = 0.01
    threads: int = 1
    """CPU threads torch may use. One by default: tiny models run fastest on one thread, and
    several threads that share cores with another process slow down many times over."""
    execution_options: ExecutionOptions = field(default_factory=ExecutionOptions)
    prompt_lengths: list[int] | None = None
    prompts: list[str] | None = None
    prompt_embeddings: str | None = None
    embedded_prompts: list[str] | None = None
    """The prompts a `prompt_embeddings` file says it was encoded from (its metadata), if it says."""
    text_batch: int | None = None
    """Captions per sampling call for a text-conditioned model (None: class labels)."""
    pipeline: bool = False
    """The model runs through its own diffusers pipeline (`model: {pipeline: ...}`)."""
    timing_order: str = "interleaved"
    """'interleaved': the timed repeats run in rounds, every case once per round (see
    `dqar_bench.measure.rounds`); 'blocked': each case's repeats back to back."""
    round_seed: int = 0
    """Seed of the case order in each round."""
    resolution: Resolution | None = None
    """The size to sample at (`dqar_bench.model.resolution`); None: the model's own size."""
    text: str = field(default="", repr=False)
    """The suite file's text, which a run keeps beside its records (`suite.yaml`)."""
    spec: SuiteSpec | None = field(default=None, compare=False, repr=False)
    """The suite file as written, typed and nested (`dqar_bench.config.schema`); the fields
    above are what validation derived from it (defaults filled in, cases expanded, paths resolved)."""
    clock: str = "wall"
    calibration: Path | None = None
    """The suite's calibration file (`calibration:`), resolved from the suite file's folder; None: none named."""
    """What times a call (`dqar_bench.measure.timing.CLOCKS`): 'wall', or 'cpu' (the process's CPU time)."""

    @property
    def prompt_texts(self) -> list[str] | None:
        """The prompt of each image of a sampling call, where the suite has them as text (CLIP score needs them)."""
        return self.prompts or self.embedded_prompts

    @property
    def batch(self) -> int:
        """Images per sampling call: one per class label, or per caption."""
        return self.text_batch if self.text_batch is not None else len(self.class_labels)

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)

    def is_baseline(self, case: Case) -> bool:
        return case.base_name == self.baseline

    def baseline_for(self, case: Case) -> str:
        """The name of the baseline case a case is compared with: the one in its execution mode."""
        return next(c.name for c in self.cases if self.is_baseline(c) and c.execution == case.execution)

    def ordered_cases(self) -> list[Case]:
        """The baselines first (one per execution mode; everyone else is compared with one), then file order."""
        return [c for c in self.cases if self.is_baseline(c)] + [c for c in self.cases if not self.is_baseline(c)]


def load_suite(path: str | Path, registry: Registry | None = None, inception_weights: str | None = None, calibrating: bool = False) -> Suite:
    """Read and validate a suite file of one model; `inception_weights` (the command line's)
    overrides the suite's `quality.inception_weights` and is checked with it. `calibrating`:
    for `dqar-bench calibrate`, which makes the calibration the suite's markers read, so
    they are kept (`Case.calibrated`) and the parts' defaults stand in."""
    suites = load_suites(path, registry, inception_weights, calibrating)
    if len(suites) > 1:
        raise SuiteError(
            f"{path}: the file holds {len(suites)} suites (a 'model' list, or several YAML documents); "
            "this command takes one (`dqar-bench run` runs each)"
        )
    return suites[0]


def load_suites(path: str | Path, registry: Registry | None = None, inception_weights: str | None = None, calibrating: bool = False) -> list[Suite]:
    """Read and validate a suite file: one suite, or one per model where `model` is a list,
    or those of each YAML document where the file holds several (separated by `---`).

    The suites of a model list share every other field and are named `<name>-<model>`.
    Documents share nothing, so models that need other settings (another sampler, other
    thresholds) sit in one file; each document's own text is what its run keeps. Every
    suite of a file names another model, since a run of several writes `<output>/<model>/`.
    """
    path = Path(path)
    suites = [
        suite for data, text in _read_yaml(path) for suite in suites_from_data(data, path, text, registry, inception_weights, calibrating)
    ]
    models = Counter(suite.model for suite in suites)
    twice = [m for m, n in models.items() if n > 1]
    if twice:
        raise SuiteError(
            f"{path}: model '{twice[0]}' has {models[twice[0]]} suites in this file; a run of several writes one "
            "directory per model, so give each document another model (or put its cases in one document)"
        )
    return suites


def suites_from_spec(spec: SuiteSpec, registry: Registry | None = None, inception_weights: str | None = None) -> list[Suite]:
    """Validate a suite written in Python (`dqar_bench.Suite`) exactly as its YAML would be;
    errors name it `<suite NAME>`, and relative paths in it are taken from the working directory."""
    data = spec.to_yaml_data()
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)  # the file it would be: the run keeps it as suite.yaml
    return suites_from_data(data, Path(f"<suite {spec.name}>"), text, registry, inception_weights)


def suites_from_data(
    data: Any, path: Path, text: str, registry: Registry | None = None, inception_weights: str | None = None, calibrating: bool = False,
) -> list[Suite]:
    """The suites of a suite file's mapping (`text` is what its content hash is taken from)."""
    registry = registry or get_registry()
    models = data.get("model") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return [parse_suite(data, path, text, registry, inception_weights, calibrating)]
    if not models or len(set(map(str, models))) != len(models):
        raise SuiteError(f"{path}: field 'model' must be a model or a non-empty list of distinct models, got {models!r}")
    name = data.get("name")
    return [parse_suite({**data, "model": m, "name": f"{name}-{m}" if isinstance(name, str) and isinstance(m, str) else name}, path, text, registry, inception_weights, calibrating) for m in models]


def _read_yaml(path: Path) -> list[tuple[Any, str]]:
    """Each YAML document of the file, with its own text (the whole file where it holds one)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read the suite file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SuiteError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the suite file as UTF-8") from None
    try:
        documents = list(yaml.safe_load_all(text))
        ends = [node.end_mark.index for node in yaml.compose_all(text, Loader=yaml.SafeLoader) if node is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{path}:{where}: YAML syntax error: {problem}; fix the YAML there") from None
    documents = [d for d in documents if d is not None] or [None]  # an empty file is one empty document
    limit = max(MIN_EXPANSION_LIMIT, EXPANSION_FACTOR * len(text))
    if sum(_expanded_size(d, limit) for d in documents) > limit:
        raise SuiteError(
            f"{path}: the suite expands to more than {limit:,} values and characters once its YAML aliases (*name) are "
            "filled in (an alias of an alias of a list repeats it exponentially); write the repeated parts out, or alias them less deeply"
        )
    if len(documents) == 1:
        return [(documents[0], text)]
    starts = [0, *ends[:-1]]
    stops = [*ends[:-1], len(text)]
    return [(d, text[a:b]) for d, a, b in zip(documents, starts, stops)]


def _expanded_size(data: Any, limit: int) -> int:
    """How big `data` is with every alias filled in: values plus characters of text,
    counted without copying anything and given up just past `limit` (a self-referencing
    alias never ends)."""
    size = 0
    stack = [data]
    while stack and size <= limit:
        item = stack.pop()
        size += 1
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return size


def parse_suite(data: Any, path: Path, text_of_file: str, registry: Registry, inception_weights: str | None = None, calibrating: bool = False) -> Suite:
    r = _Reader(path)
    if not isinstance(data, dict):
        raise r.error("the file must be a mapping with 'name', 'model', 'cases' and so on")
    r.check_keys(data, TOP_KEYS, "")
    name = r.get(data, "name", str, required=True)
    model_name, allow_download, pipeline = _model(r, data.get("model", default(SuiteSpec, "model")))
    model_field = "model.pipeline" if pipeline else "model"
    try:
        family = model_family(model_name)
    except DqarError as exc:
        raise r.error(f"field '{model_field}': {exc}") from None
    spec = families.get(family) if family is not None else None
    if pipeline:
        _check_pipeline(r, model_name, spec)
    sampler_raw = data.get("sampler", {}) or {}
    if not isinstance(sampler_raw, dict):
        raise r.error("field 'sampler' must be a mapping with name, steps and guidance_scale")
    r.check_keys(sampler_raw, SAMPLER_KEYS, "sampler.")
    sampler = r.get(sampler_raw, "name", str, default=default_sampler(model_name), field="sampler.name")
    if sampler not in SAMPLERS:
        raise r.error(f"field 'sampler.name': unknown sampler '{sampler}'{_suggest(sampler, SAMPLERS)} (samplers: {', '.join(SAMPLERS)})")
    prediction = model_prediction(model_name)
    reason = sampler_refusal(sampler, prediction) if prediction is not None else None
    if reason:
        raise r.error(f"field 'sampler.name': {reason} (model '{model_name}', family {family})")
    steps = r.get(sampler_raw, "steps", int, default=default(SamplerSpec, "steps"), field="sampler.steps")
    if steps < 1:
        raise r.error("field 'sampler.steps' must be at least 1")
    limit = _train_timesteps(model_name, spec) if sampler not in FLOW_SAMPLERS else None
    if limit is not None and steps > limit:
        raise r.error(
            f"field 'sampler.steps': {steps} steps is more than the {limit} timesteps the model's noise schedule was trained on; "
            f"{sampler} can take at most {limit} (set sampler.steps <= {limit})"
        )
    guidance = r.get(sampler_raw, "guidance_scale", float, default=default(SamplerSpec, "guidance_scale"), field="sampler.guidance_scale")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise r.error(f"field 'sampler.guidance_scale' must be a finite number >= 0 (1 or less turns classifier-free guidance off), got {guidance}")
    labels = r.int_list(data, "class_labels", default=default(SuiteSpec, "class_labels"))
    seeds = r.int_list(data, "seeds", default=default(SuiteSpec, "seeds"))
    outside = next((s for s in seeds if not SEED_MIN <= s <= SEED_MAX), None)
    if outside is not None:
        raise r.error(f"field 'seeds': seed {outside} is outside the random generator's range; give seeds from {SEED_MIN} to {SEED_MAX}")
    repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)  # one pass: a million seeds validate in a second
    if repeated:
        raise r.error(f"field 'seeds': seed {repeated[0]} is given more than once; give each seed once (outputs and quality are kept per seed)")
    device = r.get(data, "device", str, default=default(SuiteSpec, "device"))
    reason = device_refusal(device)
    if reason:
        raise r.error(f"field 'device': {reason}")
    dtype = r.get(data, "dtype", str, default=default(SuiteSpec, "dtype"))
    if dtype not in DTYPES:
        raise r.error(f"field 'dtype': '{dtype}' is not one of {', '.join(DTYPES)}{_suggest(dtype, DTYPES)}")
    if device == "cpu" and dtype == "float16":
        raise r.error("field 'dtype': float16 is not supported on the CPU; use float32 or bfloat16")
    timing = data.get("timing", {}) or {}
    if not isinstance(timing, dict):
        raise r.error("field 'timing' must be a mapping with warmup and repeats")
    r.check_keys(timing, TIMING_KEYS, "timing.")
    warmup = r.get(timing, "warmup", int, default=default(TimingSpec, "warmup"), field="timing.warmup")
    repeats = r.get(timing, "repeats", int, default=default(TimingSpec, "repeats"), field="timing.repeats")
    if warmup < 0 or repeats < 1:
        raise r.error("fields 'timing.warmup' must be >= 0 and 'timing.repeats' >= 1")
    per_step = r.get(timing, "per_step", bool, default=default(TimingSpec, "per_step"), field="timing.per_step")
    nvml_interval_ms = r.get(timing, "nvml_interval_ms", float, default=default(TimingSpec, "nvml_interval_ms"), field="timing.nvml_interval_ms")
    timing_order = r.get(timing, "order", str, default=default(TimingSpec, "order"), field="timing.order")
    if timing_order not in TIMING_ORDERS:
        raise r.error(f"field 'timing.order': '{timing_order}' is not one of {', '.join(TIMING_ORDERS)}{_suggest(timing_order, TIMING_ORDERS)}")
    round_seed = r.get(timing, "round_seed", int, default=default(TimingSpec, "round_seed"), field="timing.round_seed")
    clock = r.get(timing, "clock", str, default="wall", field="timing.clock")
    if clock not in CLOCKS:
        raise r.error(f"field 'timing.clock': '{clock}' is not one of {', '.join(CLOCKS)} (cpu: the process's CPU time, for a busy CPU)")
    if not (math.isfinite(nvml_interval_ms) and nvml_interval_ms > 0):
        raise r.error("field 'timing.nvml_interval_ms' must be > 0 (milliseconds between NVML samples)")
    # Files a run needs on this machine are checked only where the model itself can run here;
    # a GPU suite whose checkpoint is not downloaded still validates (`validate` notes both).
    runnable_here = offline_problem(model_name, allow_download, pipeline) is None
    quality = _quality(r, data.get("quality"), inception_weights, on_this_machine=runnable_here)
    probe_queries = r.get(data, "probe_queries", int, default=default(SuiteSpec, "probe_queries"))
    if probe_queries < 1:
        raise r.error(f"field 'probe_queries' must be at least 1 (query rows the entropy probe samples per image and head), got {probe_queries}")
    threads = r.get(data, "threads", int, default=default(SuiteSpec, "threads"))
    if threads < 1:
        raise r.error("field 'threads' must be at least 1 (CPU threads torch may use)")
    cores = usable_cores()
    if threads > cores:
        raise r.error(
            f"field 'threads': {threads} is more than the {cores} CPU cores this process may use; threads beyond the cores "
            f"only wait on each other and make timings meaningless; use at most {cores}"
        )
    try:
        config = model_config(model_name, allow_download)
    except ModelError as exc:
        raise r.error(f"field '{model_field}': {exc}") from None
    classes = num_classes(config)
    if family == "dit" and classes is not None:
        bad = [c for c in labels if not 0 <= c < classes]
        if bad:
            raise r.error(f"field 'class_labels': {bad[0]} is out of range for model '{model_name}' (its {classes} classes are 0..{classes - 1})")
    if pipeline and family == "dit" and guidance > 1 and classes not in (None, 1000):
        raise r.error(f"field 'model.pipeline': DiTPipeline guides with class 1000 as its null label, and this DiT has {classes} classes; set sampler.guidance_scale <= 1 or run it on the lean path (`model: {model_name}`)")
    text = _text(r, data, spec, model_name, pipeline)
    resolution = _resolution(r, data.get("resolution"), spec, model_name, runnable_here)
    if quality.clip is not None and not (text.get("prompts") or text.get("embedded_prompts")):
        raise r.error(_clip_needs_text(text, model_name))
    if spec is not None and spec.video and quality.fid:
        raise r.error(f"field 'quality.fid': FID, IS and KID score images; model '{model_name}' (family {spec.name}) makes videos; set 'quality.fid: 0'")
    if runnable_here:
        try:
            check_quality_files(quality)
        except DqarError as exc:
            raise r.error(str(exc)) from None
    default_modes = _modes(r, data.get("execution", "eager"), "field 'execution'")
    heads = config.get("num_attention_heads") if isinstance(config, dict) else None
    default_parallel = _parallel(r, data.get("parallel"), "field 'parallel'", heads)
    options = _compile_options(r, data.get("compile"))

    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise r.error("field 'cases' must be a non-empty list of cases")
    tag = Tag(model_name, config_hash(config), sampler, steps, guidance)
    # A checkpoint not on this machine cannot have been calibrated here either: its markers wait for the run.
    calibration = _CalibrationReader(r, data.get("calibration"), tag, calibrating or not runnable_here, seeds=seeds)
    planned: list[tuple[Case, tuple[str, ...]]] = []
    for index, raw in enumerate(raw_cases):
        built = _cases(r, raw, index, registry, spec, steps, calibration)
        modes = default_modes
        if raw.get("execution") is not None:
            modes = _modes(r, raw["execution"], f"case '{raw['name']}': field 'execution'")
        parallel = default_parallel
        if isinstance(raw, dict) and raw.get("parallel") is not None:
            parallel = _parallel(r, raw["parallel"], f"case '{raw['name']}': field 'parallel'", heads)
        planned.extend((dataclasses.replace(case, parallel=parallel), modes) for case in built)
    seen: set[str] = set()
    for case, _ in planned:
        if case.name in seen:
            raise r.error(f"case '{case.name}': duplicate case name; give each case its own name")
        seen.add(case.name)
    baseline = r.get(data, "baseline", str, default=default(SuiteSpec, "baseline"))
    if baseline not in seen:
        raise r.error(
            f"field 'baseline': no case named '{baseline}'{_suggest(baseline, seen)}; add a case with that name "
            f"(no parts = the untouched model) or set 'baseline' to an existing case"
        )
    cases = _per_mode(planned, baseline)
    digest = hashlib.sha256(text_of_file.encode()).hexdigest()[:16]
    return Suite(
        path, name, model_name, allow_download, sampler, steps, guidance, labels, seeds, device, dtype,
        warmup, repeats, baseline, probe_queries, cases, digest, r.get(data, "description", str, default=""),
        quality=quality, per_step=per_step, nvml_interval_s=nvml_interval_ms / 1000.0,
        execution_options=options, threads=threads, timing_order=timing_order, round_seed=round_seed, pipeline=pipeline, resolution=resolution, clock=clock,
        text=text_of_file, spec=_typed(r, data), calibration=calibration.suite_path, **text,

    )


def _typed(r: "_Reader", data: dict) -> SuiteSpec:
    """The file as the typed model. The checks above word every error a user meets; one
    that only the model finds is still told in one line, with the field's path."""
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise r.error(f"field '{_loc(first['loc'])}': {first['msg']}, got {_short(first.get('input'))}") from None


def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a field path (`cases[1].gate`), less the union member tags it adds."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (part in ("str", "int", "float", "bool", "none") or "[" in part or part.endswith(("Spec", "PartRef"))):
            out += ("." if out else "") + part
    return out


def _resolution(r: "_Reader", raw: Any, spec: families.Family | None, model: str, runnable_here: bool) -> Resolution | None:
    """The size the suite samples at; checked against the model's configs where they are here (else at load)."""
    if raw is None:
        return None
    try:
        resolution = parse_resolution(raw, spec)
        if spec is not None and runnable_here:
            check_for_model(resolution, model, spec)
    except ModelError as exc:
        raise r.error(f"field 'resolution': {exc}") from None
    return resolution


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _modes(r: "_Reader", raw: Any, where: str) -> tuple[str, ...]:
    """An execution mode or a list of them, in the order of `MODES`."""
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise r.error(f"{where} must be an execution mode or a list of them ({', '.join(MODES)}), got {raw!r}")
    for value in values:
        if value not in MODES:
            raise r.error(f"{where}: unknown execution mode '{value}'{_suggest(value, MODES)} (modes: {', '.join(MODES)})")
    return tuple(m for m in MODES if m in values)


def _parallel(r: "_Reader", raw: Any, where: str, heads: int | None) -> Parallel | None:
    """`{ulysses: N}` / `{ring: N}`, checked in one line (see `context_parallel.parse_parallel`)."""
    try:
        return parse_parallel(raw, heads)
    except ValueError as exc:
        raise r.error(f"{where}: {exc}") from None


def _per_mode(planned: list[tuple[Case, tuple[str, ...]]], baseline: str) -> list[Case]:
    """One case per execution mode; the baseline runs in every mode any case uses.

    With one mode in the whole suite the names stay as written; with several each case is
    named `<name>@<mode>`, so that records, outputs and `--resume` keep one name per row.
    """
    present = tuple(m for m in MODES if any(m in modes for _, modes in planned))
    several = len(present) > 1
    cases: list[Case] = []
    for case, modes in planned:
        for mode in present if case.name == baseline else modes:
            name = f"{case.name}@{mode}" if several else case.name
            cases.append(dataclasses.replace(case, name=name, execution=mode, base=case.name if several else ""))
    return cases


def _compile_options(r: "_Reader", raw: Any) -> ExecutionOptions:
    if raw is None:
        return ExecutionOptions()
    if not isinstance(raw, dict):
        raise r.error("field 'compile' must be a mapping (backend, mode, max_graphs)")
    r.check_keys(raw, COMPILE_KEYS, "compile.")
    max_graphs = r.get(raw, "max_graphs", int, default=ExecutionOptions.max_graphs, field="compile.max_graphs")
    if max_graphs < 1:
        raise r.error("field 'compile.max_graphs' must be >= 1 (compiled graphs / CUDA graphs per case before steps run eagerly)")
    return ExecutionOptions(
        compile_backend=r.get(raw, "backend", str, default=ExecutionOptions.compile_backend, field="compile.backend"),
        compile_mode=r.get(raw, "mode", str, field="compile.mode"),
        max_graphs=max_graphs,
    )


def _text(r: "_Reader", data: dict, spec: families.Family | None, model: str, pipeline: bool = False) -> dict[str, Any]:
    """Captions for a text-conditioned model; none for a class-conditioned one."""
    given = [k for k in TEXT_KEYS if data.get(k) is not None]
    if spec is None or spec.text is None:
        if given and spec is not None:
            raise r.error(f"field '{given[0]}': model '{model}' is class-conditioned; use 'class_labels'")
        return {}
    if len(given) != 1:
        raise r.error(
            f"model '{model}' is text-conditioned: give exactly one of 'prompt_lengths' (synthetic captions of "
            f"these token counts), 'prompts' (needs the checkpoint's T5 text encoder) or 'prompt_embeddings' (a .safetensors file)"
        )
    key = given[0]
    if key == "prompt_lengths":
        lengths = r.int_list(data, key, default=[])
        most = spec.text.max_tokens
        if any(not 1 <= n <= most for n in lengths):
            raise r.error(f"field 'prompt_lengths': token counts must be in 1..{most} (family {spec.name}), got {lengths}")
        return {"prompt_lengths": lengths, "text_batch": len(lengths)}
    if key == "prompts" and spec.text.encoder is None and not pipeline:
        raise r.error(
            f"field 'prompts': family {spec.name} encodes prompts with its own pipeline's text encoders, which the "
            f"built-in loop does not run; give 'prompt_lengths' (synthetic captions) or 'prompt_embeddings' (a .safetensors file), or run a checkpoint through its own pipeline (`model: {{pipeline: ...}}`)"
        )
    if key == "prompts":
        prompts = data[key]
        if isinstance(prompts, dict):
            prompts = _prompt_file(r, prompts)
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise r.error("field 'prompts' must be a non-empty list of strings, or {file: a prompt file, count: how many of its prompts}")
        return {"prompts": prompts, "text_batch": len(prompts)}
    file = Path(r.get(data, key, str)).expanduser()
    if not file.is_absolute():
        file = r.path.parent / file
    if not file.exists():
        raise r.error(f"field 'prompt_embeddings': {file} does not exist; precompute it (see dqar_bench.model.conditioning) or use 'prompts'")
    from dqar_bench.model.conditioning import embeddings_batch, embeddings_prompts

    try:
        batch = embeddings_batch(file)
        prompts = embeddings_prompts(file)
    except Exception as exc:
        raise r.error(f"field 'prompt_embeddings': {file} is not a usable embeddings file: {exc}") from None
    if prompts is not None and len(prompts) != batch:
        raise r.error(f"field 'prompt_embeddings': {file} holds {batch} captions but its metadata names {len(prompts)} prompts; write one prompt per caption")
    return {"prompt_embeddings": str(file), "text_batch": batch, "embedded_prompts": prompts}


def _prompt_file(r: "_Reader", raw: dict) -> list[str]:
    """`prompts: {file: PATH, count: N}`: the first N prompts of a prompt file (all by default), the path taken from the suite's folder."""
    from dqar_bench.model.prompt_file import read_prompts

    r.check_keys(raw, PROMPT_FILE_KEYS, "prompts.")
    file = Path(r.get(raw, "file", str, required=True, field="prompts.file")).expanduser()
    if not file.is_absolute():
        file = r.path.parent / file
    try:
        prompts = read_prompts(file)
    except ValueError as exc:
        raise r.error(f"field 'prompts.file': {exc}") from None
    count = r.get(raw, "count", int, default=len(prompts), field="prompts.count")
    if not 1 <= count <= len(prompts):
        raise r.error(f"field 'prompts.count': {file} has {len(prompts)} prompts; give a count in 1..{len(prompts)}, got {count}")
    return prompts[:count]


def _quality(r: "_Reader", raw: Any, inception_weights: str | None = None, on_this_machine: bool = True) -> QualityConfig:
    """Paths are taken from the working directory, like a model folder's; a reference path is
    checked `on_this_machine` (the weights files, by `check_quality_files`, after the model)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise r.error(f"field 'quality' must be a mapping ({', '.join(QUALITY_KEYS)})")
    r.check_keys(raw, QUALITY_KEYS, "quality.")
    if isinstance(raw.get("fid"), dict):  # {num_images, reference_stats}: FID-50K against statistics
        fid_config = parse_fid_config(raw["fid"], r.path)
        if fid_config.reference_stats and "reference" in raw:
            raise r.error("give the FID reference once: 'quality.reference' or 'quality.fid.reference_stats'")
        raw = {**raw, "fid": fid_config.num_images}
        if fid_config.reference_stats:
            raw["reference"] = fid_config.reference_stats
    fid = r.get(raw, "fid", int, default=0, field="quality.fid")
    if fid < 0:
        raise r.error("field 'quality.fid' must be >= 0 (images per case for FID / IS / KID; 0 turns them off)")
    metrics = raw.get("metrics", list(FIDELITY_METRICS))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics or any(m not in FIDELITY_METRICS for m in metrics):
        raise r.error(f"field 'quality.metrics' must be a non-empty list of {', '.join(FIDELITY_METRICS)}, got {metrics!r}")
    reference = r.get(raw, "reference", str, default="baseline", field="quality.reference")
    named = reference == "baseline" or reference in REFERENCE_SETS
    if fid and not named and on_this_machine and not Path(reference).expanduser().exists():
        sets = ", ".join(REFERENCE_SETS)
        raise r.error(f"field 'quality.reference': {reference} does not exist; give an image folder, a .npz of FID statistics, 'baseline' or a shipped set ({sets})")
    classifier = r.get(raw, "classifier", str, field="quality.classifier")
    if classifier is not None and classifier not in CLASSIFIERS:
        raise r.error(f"field 'quality.classifier': unknown classifier '{classifier}' (classifiers: {', '.join(CLASSIFIERS)})")
    weights = r.get(raw, "inception_weights", str, field="quality.inception_weights")
    if inception_weights is not None:
        weights = inception_weights
    config = QualityConfig(
        fid=fid,
        reference=reference if named else str(Path(reference).expanduser()),
        classifier=classifier,
        metrics=tuple(metrics),
        feature_extractor=r.get(raw, "feature_extractor", str, default=QualityConfig.feature_extractor, field="quality.feature_extractor"),
        inception_weights=str(Path(weights).expanduser()) if weights is not None else None,
        lpips=_lpips(r, raw.get("lpips")),
        clip=_clip(r, raw.get("clip")),
    )
    return config


def _lpips(r: "_Reader", raw: Any) -> LpipsConfig | None:
    """`quality.lpips: {backbone: PATH, net: alex | vgg, linear: PATH}`; the files are checked by `check_quality_files`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise r.error("field 'quality.lpips' must be a mapping: {backbone: torchvision's ImageNet checkpoint of the net, net: alex | vgg, linear: LPIPS' linear-layer file}")
    r.check_keys(raw, LPIPS_KEYS, "quality.lpips.")
    backbone = r.get(raw, "backbone", str, required=True, field="quality.lpips.backbone")
    net = r.get(raw, "net", str, default="alex", field="quality.lpips.net")
    if net not in LPIPS_NETS:
        raise r.error(f"field 'quality.lpips.net': unknown net '{net}'{_suggest(net, LPIPS_NETS)} (nets: {', '.join(LPIPS_NETS)})")
    linear = r.get(raw, "linear", str, field="quality.lpips.linear")
    return LpipsConfig(str(Path(backbone).expanduser()), net, str(Path(linear).expanduser()) if linear is not None else None)


def _clip(r: "_Reader", raw: Any) -> str | None:
    """`quality.clip: {weights: PATH}`, a local CLIP checkpoint folder; checked by `check_quality_files`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise r.error("field 'quality.clip' must be a mapping: {weights: a local CLIP checkpoint folder}")
    r.check_keys(raw, CLIP_KEYS, "quality.clip.")
    return str(Path(r.get(raw, "weights", str, required=True, field="quality.clip.weights")).expanduser())


def _clip_needs_text(text: dict[str, Any], model: str) -> str:
    """Why a suite's images have no prompt text for CLIP score to read."""
    fix = "give 'prompts' (a list, or {file: ...}) or a 'prompt_embeddings' file that carries its prompts, or remove 'quality.clip'"
    if not text:
        return f"field 'quality.clip': model '{model}' is class-conditioned and CLIP score compares images with prompts; remove 'quality.clip'"
    if "prompt_lengths" in text:
        return f"field 'quality.clip': 'prompt_lengths' captions are synthetic embeddings with no text to score against; {fix}"
    return f"field 'quality.clip': {text['prompt_embeddings']} carries no prompts in its metadata (key 'prompts'); {fix}"


def check_quality_files(quality: QualityConfig) -> None:
    """Every weights file the quality metrics will load is there and is plain weights
    (`dqar_bench.core.weights`): checked before anything runs, so nothing is sampled in vain and
    no pickle ever runs code."""
    if quality.fid:
        check_registered(quality.feature_extractor)
        check_weights(quality.feature_extractor, quality.inception_weights)
    elif quality.inception_weights is not None:
        check_weights_file(quality.inception_weights, WEIGHTS_OPTION)
    if quality.classifier is not None:
        check_classifier(quality.classifier)
    if quality.lpips is not None:
        check_lpips_files(quality.lpips)
    if quality.clip is not None:
        check_clip_checkpoint(quality.clip)


def _model(r: "_Reader", raw: Any) -> tuple[str, bool, bool]:
    """The model, whether it may be downloaded, and whether it runs through its own pipeline."""
    if isinstance(raw, str):
        return raw, False, False
    if isinstance(raw, dict):
        r.check_keys(raw, MODEL_KEYS, "model.")
        if "pipeline" in raw:
            if set(raw) != {"pipeline"}:
                raise r.error("field 'model': give either 'pipeline' alone (the pipeline path never downloads) or 'name' (and 'download')")
            return r.get(raw, "pipeline", str, required=True, field="model.pipeline"), False, True
        return r.get(raw, "name", str, required=True, field="model.name"), r.get(raw, "download", bool, default=False, field="model.download"), False
    raise r.error("field 'model' must be a model name or a mapping with 'name' (and 'download') or 'pipeline'")


def _check_pipeline(r: "_Reader", name: str, spec: families.Family | None) -> None:
    """A pipeline the path runs; a built-in model has none (they are built in code)."""
    from dqar_bench.model.pipelines import pipeline_refusal

    if name in BUILTIN_MODELS:
        raise r.error(f"field 'model.pipeline': '{name}' is a built-in model with no pipeline on disk; give a diffusers pipeline folder or checkpoint id")
    index = local_json(name, "model_index.json")
    if index is None and Path(name).expanduser().exists():
        raise r.error(f"field 'model.pipeline': folder '{name}' has no model_index.json; give a folder a pipeline was saved to (`pipe.save_pretrained(folder)`)")
    reason = pipeline_refusal(spec, str(index["_class_name"]) if index and "_class_name" in index else None)
    if reason:
        raise r.error(f"field 'model.pipeline': {reason}")


def _cases(
    r: "_Reader", raw: Any, index: int, registry: Registry, family: families.Family | None = None, steps: int = 20,
    calibration: "_CalibrationReader | None" = None,
) -> list[Case]:
    if not isinstance(raw, dict):
        raise r.error(f"cases[{index}]: each case must be a mapping with at least 'name'")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise r.error(f"cases[{index}]: field 'name' must be text, got {_short(name)}; quote it (name: '{name}')")
    if not name:
        raise r.error(f"cases[{index}]: field 'name' is missing; give the case a name")
    where = f"case '{name}'"
    r.check_keys(raw, CASE_KEYS, "", where)
    if "diffusers-hook" in raw or "cache-dit" in raw:
        return [_hook_case(r, raw, where, steps)]
    calibration = (calibration or _CalibrationReader(r, None, None, False)).for_case(raw.get("calibration"), where)
    specs: dict[str, PartSpec] = {}
    for kind in KINDS:
        if kind in raw:
            specs[kind] = _part_spec(r, where, kind, raw[kind])
    description = r.get(raw, "description", str, default="", field=f"description' of case '{name}")
    sweep = raw.get("sweep")
    if sweep is None:
        return [_build(r, where, Case(name, _with_defaults(specs), description), registry, family, calibration)]
    if not isinstance(sweep, dict):
        raise r.error(f"{where}: field 'sweep' must be a mapping with 'parameter' (kind.param) and 'values'")
    r.check_keys(sweep, SWEEP_KEYS, "sweep.", where)
    parameter = sweep.get("parameter")
    values = sweep.get("values")
    if not isinstance(parameter, str) or parameter.count(".") != 1 or parameter.split(".")[0] not in KINDS:
        raise r.error(f"{where}: field 'sweep.parameter' must look like 'gate.every' (a part kind, a dot, a parameter)")
    if not isinstance(values, list) or not values:
        raise r.error(f"{where}: field 'sweep.values' must be a non-empty list")
    kind, param = parameter.split(".")
    if kind not in specs and kind not in DEFAULT_PARTS:
        raise r.error(f"{where}: field 'sweep.parameter' names the {kind}, but the case names no {kind}")
    cases = []
    for value in values:
        swept = dict(specs)
        base = swept.get(kind, PartSpec(kind, DEFAULT_PARTS[kind]))
        swept[kind] = PartSpec(kind, base.name, {**base.params, param: copy.deepcopy(value)})
        label = f"calibrated{value[MARKER]}" if isinstance(value, dict) and set(value) == {MARKER} else value
        case = Case(f"{name}-{param}-{label}", _with_defaults(swept), description)
        cases.append(_build(r, f"case '{case.name}' (sweep of '{name}')", case, registry, family, calibration))
    return cases


def _hook_case(r: "_Reader", raw: dict, where: str, steps: int) -> Case:
    """A case that runs one of diffusers' own cache hooks, or cache-dit, instead of dqar-bench parts."""
    from dqar_bench.strategy import cache_dit, diffusers_hooks
    from dqar_bench.strategy.diffusers_hooks import HookConfigError

    key = "cache-dit" if "cache-dit" in raw else "diffusers-hook"
    mixed = [k for k in (*KINDS, "sweep", "diffusers-hook") if k in raw and k != key]
    if mixed:
        raise r.error(f"{where}: fields '{key}' and '{mixed[0]}': a case runs one of diffusers' hook, cache-dit or dqar-bench parts; split it")
    try:
        hook = (cache_dit.check if key == "cache-dit" else diffusers_hooks.check)(raw[key], steps)
    except HookConfigError as exc:
        raise r.error(f"{where}: {exc}") from None
    description = r.get(raw, "description", str, default="", field=f"description' of case '{raw['name']}")
    return Case(raw["name"], {}, description, hook=hook)


def _with_defaults(specs: dict[str, PartSpec]) -> dict[str, PartSpec]:
    if not specs:
        return {}
    return {kind: specs.get(kind, PartSpec(kind, DEFAULT_PARTS[kind])) for kind in KINDS}


def _part_spec(r: "_Reader", where: str, kind: str, raw: Any) -> PartSpec:
    if isinstance(raw, str):
        return PartSpec(kind, raw)
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        params = {k: v for k, v in raw.items() if k != "name"}
        return PartSpec(kind, raw["name"], params)
    raise r.error(f"{where}: field '{kind}' must be a {kind} name or a mapping with 'name' and its parameters")


def _build(
    r: "_Reader", where: str, case: Case, registry: Registry, family: families.Family | None = None, calibration: "_CalibrationReader | None" = None,
) -> Case:
    """The case with every part bound (`part_spec.bind`: built once, so each checks its own
    parameters), checked together and against the model's family."""
    if calibration is not None:
        case = calibration.resolve(case, where, registry)
    parts: dict[str, PartSpec] = {}
    for kind, spec in case.parts.items():
        names = registry.names(kind)
        if spec.name not in names:
            if registry.problems:  # it may well be the broken plugin's part: say what broke first
                raise r.error(
                    f"{where}: field '{kind}': {kind} '{spec.name}' is not installed, and plugins failed to load: "
                    f"{'; '.join(registry.problems)}; fix or reinstall that plugin (`dqar-bench plugins` lists the problems)"
                    + (f", or did you mean {_close(spec.name, names)}?" if _close(spec.name, names) else "")
                )
            raise r.error(
                f"{where}: field '{kind}': unknown {kind} '{spec.name}'{_suggest(spec.name, names)} "
                f"(installed: {', '.join(names)}; see `dqar-bench plugins`)"
            )
        try:
            parts[kind] = bind(spec, registry)
        except ValueError as exc:
            raise r.error(f"{where}: field '{kind}' ({spec.name}): {exc}") from None
        reason = family.refusal(parts[kind].info.cls) if family is not None else None  # type: ignore[union-attr]
        if reason:
            raise r.error(f"{where}: field '{kind}' ({spec.name}): {reason}")
    if parts:
        from dqar_bench.strategy.strategy import refusal

        reason = refusal(parts["gate"].info.cls, parts["cache"].info.cls)  # type: ignore[arg-type, union-attr]
        if reason:
            raise r.error(f"{where}: fields 'gate' and 'cache': {reason}")
    return dataclasses.replace(case, parts=parts)


class _CalibrationReader:
    """The calibration a suite's (or a case's) `calibration:` names, read once, and the markers
    (`{calibrated: 0.5}`, `calibrated`) of each case resolved against it."""

    def __init__(self, r: "_Reader", raw: Any, tag: Tag | None, calibrating: bool, label: str = "field 'calibration'", seeds: list[int] | None = None) -> None:
        self.r, self.tag, self.calibrating, self.label, self.seeds = r, tag, calibrating, label, seeds or []
        if raw is not None and not (isinstance(raw, str) and raw.strip()):
            raise r.error(f"{label} must be the path of a calibration file (made by `dqar-bench calibrate SUITE -o FILE`), got {_short(raw)}")
        self.suite_path = self._path(raw) if raw is not None else None
        self.path = self.suite_path
        self._file: calib.CalibrationFile | None = None

    def _path(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        if not path.is_absolute() and not str(self.r.path).startswith("<"):
            path = self.r.path.parent / path
        return path

    def for_case(self, raw: Any, where: str) -> "_CalibrationReader":
        """This reader, or the one a case names for itself."""
        if raw is None:
            return self
        return _CalibrationReader(self.r, raw, self.tag, self.calibrating, f"{where}: field 'calibration'", self.seeds)

    def file(self, where: str, field: str) -> calib.CalibrationFile:
        if self.path is None:
            raise self.r.error(
                f"{where}: field '{field}' reads a calibration, and none is named; add 'calibration: FILE' to the suite "
                "(or the case), made by: dqar-bench calibrate SUITE -o FILE"
            )
        if self._file is None:
            try:
                self._file = calib.read(self.path)
            except CalibrationError as exc:
                raise self.r.error(f"{self.label}: {exc}") from None
        return self._file

    def resolve(self, case: Case, where: str, registry: Registry) -> Case:
        found: dict[str, Any] = {}
        for kind, spec in case.parts.items():
            for name, marker in calib.markers(spec.params).items():
                cls = registry.get(kind, spec.name).cls if spec.name in registry.names(kind) else None
                if cls is None:
                    return case  # the unknown part is the error `_build` words
                try:
                    calib.check_marker(name, marker, getattr(cls, "THRESHOLD", None) if kind == "gate" else None)
                except ValueError as exc:
                    raise self.r.error(f"{where}: field '{kind}' ({spec.name}): {exc}") from None
                found[f"{kind}.{name}"] = marker
        gate = case.parts.get("gate")
        searched = getattr(registry.get("gate", gate.name).cls, "THRESHOLD", None) if gate is not None and gate.name in registry.names("gate") else None
        key = calib.parts_key({k: (s.name, s.params) for k, s in case.parts.items()}, searched) if case.parts else None
        if not found:
            return dataclasses.replace(case, calibration_key=key)
        if self.calibrating:
            parts = {k: PartSpec(k, s.name, calib.without_markers(s.params)) for k, s in case.parts.items()}
            return dataclasses.replace(case, parts=parts, calibrated=found, calibration_key=key)
        first = next(iter(found))
        file = self.file(where, first)
        assert self.tag is not None and key is not None
        try:
            entry = file.entry(self.tag)
            calib.check_seeds(entry, self.seeds, file.path)
            parts = {k: PartSpec(k, s.name, calib.resolve(s.params, k, entry, case.name, key, where)) for k, s in case.parts.items()}
        except CalibrationError as exc:
            raise self.r.error(f"{self.label}: {exc}" if str(exc).startswith("calibration ") else str(exc)) from None
        return dataclasses.replace(case, parts=parts, calibrated=found, calibration_key=key, calibration_digest=entry.digest)


def device_refusal(name: str) -> str | None:
    """Why `name` is no device a run can use (one line), or None: auto, cpu, cuda or cuda:N, N >= 0."""
    if name in DEVICES or re.fullmatch(r"cuda:[0-9]+", name):
        return None
    return f"'{name}' is not one of {', '.join(DEVICES)} or cuda:N (N = 0, 1, ...: the GPU's index)"


def _train_timesteps(model_name: str, spec: families.Family | None) -> int | None:
    """How many timesteps the model's noise schedule has: DDIM refuses more steps, DPM-Solver repeats timesteps."""
    config = None if model_name in BUILTIN_MODELS else local_json(model_name, "scheduler/scheduler_config.json")
    if config is None:
        config = dict(spec.scheduler) if spec is not None else DIT_SCHEDULER_CONFIG
    value = config.get("num_train_timesteps", 1000)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _suggest(word: str, choices: Any) -> str:
    close = _close(word, choices)
    return f" (did you mean {close}?)" if close else ""


def _close(word: str, choices: Any) -> str:
    """Up to three close matches, quoted and joined with 'or' ("" when none is close)."""
    return " or ".join(repr(c) for c in difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5))


def _short(value: Any, limit: int = 80) -> str:
    """A value as the error shows it: its repr, cut so that one line stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Reader:
    """Typed access to mapping fields that turns every mismatch into a located SuiteError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, message: str) -> SuiteError:
        return SuiteError(f"{self.path}: {message}")

    def check_keys(self, data: dict, allowed: tuple[str, ...], prefix: str, where: str = "") -> None:
        for key in data:
            if key not in allowed:
                lead = f"{where}: " if where else ""
                raise self.error(f"{lead}unknown field '{prefix}{key}'{_suggest(str(key), allowed)} (fields: {', '.join(allowed)})")

    def get(self, data: dict, key: str, kind: type, default: Any = None, required: bool = False, field: str | None = None) -> Any:
        label = field or key
        if key not in data or data[key] is None:
            if required:
                raise self.error(f"field '{label}' is missing; add it")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e6` (no dot) as text; the number was meant
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"field '{label}' must be {kind.__name__}, got {_short(value)}")
        return value

    def int_list(self, data: dict, key: str, default: list[int]) -> list[int]:
        value = data.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.error(f"field '{key}' must be a non-empty list of integers, got {_short(value)}")
        return value
