"""Measured runs behind `dllm bench`: the reference loop and the fast default, side by side.

Knows: how to time generations honestly in one process (same prompts, same model, a warm-up
first; each run through `generate.run` on the local backend, the path `dllm code` takes), what
to report (tok/s, tokens committed per forward, forwards, per-forward ms next to the bandwidth
floor, time to first frame, load time, peak memory, agreement of each setting with the
reference output, whether its tokens are identical), and which settings a model gets: the
bidirectional families the official loop against dllm's fast mode; the block-diffusion families
their own loop with full recompute against the exact block KV cache (identical tokens) and
their recipe. Device measurements (bandwidth, peak memory, sync) are engine/device.py's.
Must not: import torch at module level, print (format_report returns text; the CLI writes it),
or invent a figure — every number in a BenchReport was measured in this run.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from . import generate
from .config import SamplerConfig, family_sampler
from .errors import UsageError
from .events import DenoiseStep, Request, SpecialTokens

if TYPE_CHECKING:
    from .engine.model import Model

BENCH_TASKS = (
    "write a function that returns the mean of a list of numbers",
    "write a Python function is_palindrome(s) that ignores case and spaces",
    "add type hints and a docstring to: def area(w, h): return w * h",
    "write a function that counts the words in a text file",
)
SYNTHETIC_PROMPT_TOKENS = 64  # prompt length for random-weight shapes (no tokenizer)


@dataclass(frozen=True)
class BenchRow:
    """One sampler setting over all prompts (sums over prompts; seconds per prompt = median of repeats)."""

    name: str
    settings: str
    tokens: int  # canvas tokens decided (gen_length × prompts)
    decoded: int  # of those, decided by the model (the rest: eos filled by early stop)
    answer_tokens: int  # tokens before the first stop token
    forwards: int
    seconds: float
    first_frame_s: float  # mean time from denoise() to the first step event
    peak_memory_bytes: int
    agreement: float | None  # share of equal tokens with the reference output (answers cut at eos)
    identical: bool | None = None  # every prompt's tokens equal the reference's (None: the reference)
    tok_s: float = 0.0
    tokens_per_forward: float = 0.0
    forward_ms: float = 0.0
    speedup: float | None = None  # reference seconds / these seconds


@dataclass(frozen=True)
class BenchReport:
    model: str
    shape: str | None
    device: str
    dtype: str
    gen_length: int
    prompts: int
    prompt_tokens: float  # mean prompt length
    n_params: int
    weights_bytes: int
    bandwidth_gbs: float  # measured device memory bandwidth
    floor_ms: float  # weights bytes ÷ bandwidth: one forward can't be faster on a bandwidth-bound device
    load_s: float
    repeats: int
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    torch_version: str = ""
    # A mixture of experts reads only its active parameters per token (MoESpec.active_param_count:
    # the k routed experts, shared expert, router, attention, head): their bytes ÷ bandwidth.
    # Dense models: = n_params and floor_ms.
    active_params: int = 0
    active_floor_ms: float = 0.0
    quant: str = "none"
    quant_check: "QuantCheck | None" = None  # --quant int8: against the same weights unquantised

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, name: str) -> BenchRow:
        return next(r for r in self.rows if r.name == name)


@dataclass(frozen=True)
class QuantCheck:
    """`dllm bench --quant int8`: the quantised model against the same weights unquantised, in this
    run (logits on each prompt's canvas: the prompt then gen_length masks; one greedy generation)."""

    modules: int  # linears stored as int8
    weights_bytes: int  # parameter + buffer bytes unquantised
    weights_bytes_q: int  # quantised (int8 weights, fp32 scales, the rest in the load dtype)
    max_abs: float  # max |logit difference|
    max_rel: float  # max over positions of ||difference||2 / ||logits||2
    mean_rel: float  # mean over positions of the same
    argmax_agreement: float  # share of positions whose argmax is the same
    greedy_identical: bool  # the reference setting (greedy) on the first prompt: identical tokens
    greedy_agreement: float  # share of equal tokens of that generation
    forward_ms: float  # one full forward over the first canvas, unquantised (median of 5, interleaved)
    forward_ms_q: float  # the same, quantised


def run_bench(model_path: str | None, *, shape: str | None = None, device: str | None = "cpu",
              dtype: str | None = "float32", gen_length: int = 128, prompts: list[str] | None = None,
              ks: Sequence[int] = (), repeats: int = 1, compile: bool = False, layers: int | None = None,
              prompt_tokens: int = SYNTHETIC_PROMPT_TOKENS, n_prompts: int | None = None,
              quant: str = "none") -> BenchReport:
    """Load a checkpoint (None: the embedded default) or random weights of a published `shape`
    (with `layers` layers instead of its own: a reduced-depth shape), and bench it. `n_prompts`:
    the first N tasks (or N synthetic prompts of `prompt_tokens` tokens for a shape). quant
    "int8": the rows time the quantised model; then the same weights are loaded unquantised and
    compared (`QuantCheck`)."""
    from .footprint import quant_mode

    quant = quant_mode(quant)
    from .engine.device import pick_device, pick_dtype, sync
    from .engine.loader import PUBLISHED_SHAPES, load_model, random_model, reduced

    if shape is not None and model_path is not None:
        raise UsageError("use either --model or --shape, not both")
    if shape is not None and shape not in PUBLISHED_SHAPES:
        raise UsageError(f"unknown --shape {shape!r}; choose one of {', '.join(PUBLISHED_SHAPES)}")
    if layers is not None and shape is None:
        raise UsageError("--layers reduces a --shape's depth; it does not apply to --model")
    if prompt_tokens < 1 or (n_prompts is not None and n_prompts < 1):
        raise UsageError("--prompt-tokens and --prompts must be at least 1")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    start = time.perf_counter()
    def load(q: str) -> "Model":
        if shape is not None:
            return random_model(reduced(PUBLISHED_SHAPES[shape], layers), device=dev, dtype=dt, quant=q)
        return load_model(model_path, device=dev, dtype=dt, quant=q)

    model = load(quant)
    sync(dev)
    load_s = time.perf_counter() - start
    label = (f"random weights, {shape} shape" + (f" with {layers} layers" if layers is not None else "")
             if shape else (model.checkpoint.name if model.checkpoint else "?"))
    ids = prompt_token_ids(model, prompts, prompt_tokens, n_prompts)
    report = bench_model(model, label=label, shape=shape, load_s=load_s, prompt_ids=ids, gen_length=gen_length,
                         ks=ks, repeats=repeats, compile=compile)
    if quant == "none":
        return report
    check = compare_quant(load("none"), model, ids, gen_length)
    return replace(report, quant=quant, quant_check=check,
                   notes=report.notes + [f"--quant {quant}: the rows time the quantised model; the drift and "
                                         "the per-forward times compare it with the same weights unquantised"])


def compare_quant(full: "Model", quantised: "Model", prompt_ids: list[list[int]], gen_length: int) -> QuantCheck:
    """QuantCheck of `quantised` against `full` (the same weights) on the prompts' canvases."""
    import torch

    from .engine.device import sync
    from .engine.model import attention_block
    from .engine.quant import quantised_modules, storage_bytes

    rel: list[torch.Tensor] = []
    max_abs, same, total = 0.0, 0, 0
    canvases = [torch.tensor([p + [full.tokens.mask] * gen_length], device=full.device) for p in prompt_ids]
    for ids in canvases:
        a, b = full.logits(ids).float(), quantised.logits(ids).float()
        max_abs = max(max_abs, float((a - b).abs().max()))
        rel.append(((a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)).flatten())
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[1]
    errors = torch.cat(rel)
    times: dict[str, list[float]] = {"full": [], "q": []}
    for i in range(6):  # interleaved; the first of each is a warm-up
        for key, model in (("full", full), ("q", quantised)):
            sync(model.device)
            t = time.perf_counter()
            model.logits(canvases[0])
            sync(model.device)
            if i:
                times[key].append(time.perf_counter() - t)
    block = attention_block(full)
    base = family_sampler(full.spec.family, block) if block is not None else None
    ref_cfg = bench_configs(gen_length, (), base)[0][2]
    finals = [_timed(m, prompt_ids[0], ref_cfg, "delayed", False)[0] for m in (full, quantised)]
    a_tokens, b_tokens = (t.last.tokens if t.last is not None else [] for t in finals)
    return QuantCheck(
        modules=len(quantised_modules(quantised.net)), weights_bytes=storage_bytes(full.net),
        weights_bytes_q=storage_bytes(quantised.net), max_abs=max_abs, max_rel=float(errors.max()),
        mean_rel=float(errors.mean()), argmax_agreement=same / total, greedy_identical=a_tokens == b_tokens,
        greedy_agreement=sum(x == y for x, y in zip(a_tokens, b_tokens)) / max(len(a_tokens), 1),
        forward_ms=1e3 * statistics.median(times["full"]), forward_ms_q=1e3 * statistics.median(times["q"]))


def prompt_token_ids(model: "Model", prompts: list[str] | None = None,
                     prompt_tokens: int = SYNTHETIC_PROMPT_TOKENS, n_prompts: int | None = None) -> list[list[int]]:
    """The tasks rendered through the model's chat template and encoded; fixed random ids of
    `prompt_tokens` tokens for a model without a tokenizer (random weights of a published shape)."""
    import random

    tasks = list(prompts or BENCH_TASKS)[:n_prompts]
    if n_prompts is not None and len(tasks) < n_prompts and model.tokenizer is None:
        tasks += [""] * (n_prompts - len(tasks))
    tok = model.tokenizer
    if tok is None:
        rng = random.Random(0)
        top = min(model.tokens.mask, 10_000)  # ordinary tokens in every published vocabulary
        return [[rng.randrange(top) for _ in range(prompt_tokens)] for _ in tasks]
    from .prompt import build_messages

    out = []
    for task in tasks:
        text = tok.apply_chat_template(build_messages(task)) if tok.chat_template else task
        out.append(tok.encode(text))
    return out


def bench_configs(gen_length: int, ks: Sequence[int] = (),
                  base: SamplerConfig | None = None) -> list[tuple[str, str, SamplerConfig, str]]:
    """(name, description, config, cache_refresh) of every timed setting; the reference first.
    `base` with a block_loop (a block-diffusion model's recipe): block_configs."""
    if base is not None and base.block_loop is not None:
        return block_configs(gen_length, ks, base)
    ref = SamplerConfig.reference(gen_length=gen_length, block_length=_block(gen_length))
    fast = SamplerConfig(gen_length=gen_length, block_length=_block(gen_length))
    rows = [("reference", "official loop: 1 token/step, full canvas, no cache", ref, "delayed"),
            ("fast", f"default: threshold {fast.threshold}, {fast.cache} cache, early stop", fast, "delayed"),
            ("fast-refresh", "default, but a full pass at every block start (Fast-dLLM)", fast, "block")]
    for k in ks:
        steps = fast.num_blocks * math.ceil(fast.block / k)
        cfg = fast.with_(steps=steps, threshold=None, early_stop=False)
        rows.append((f"k={k}", f"{k} tokens/forward: {steps} steps, {fast.cache} cache", cfg, "delayed"))
    return rows


def block_configs(gen_length: int, ks: Sequence[int], base: SamplerConfig) -> list[tuple[str, str, SamplerConfig, str]]:
    """A block-diffusion model's settings: its loop on the official fixed schedule (one token per
    step, greedy, no early stop) with full recompute of everything before the block at every
    step (the reference), the same with the exact block KV cache (identical tokens), and its
    recipe (threshold, exact cache, early stop); k rows: ceil(B / k) steps per block."""
    B = base.block
    gen = max(gen_length // B, 1) * B
    ref = base.with_(gen_length=gen, steps=None, threshold=None, temperature=0.0, cache="none", early_stop=False)
    rows = [("reference", f"{base.block_loop} loop, 1 token/step, full recompute every step", ref, "delayed"),
            ("exact-cache", "the same with the exact block KV cache (tokens must be identical)",
             ref.with_(cache="exact"), "delayed"),
            ("fast", f"recipe: threshold {base.threshold}, exact cache, early stop", base.with_(gen_length=gen),
             "delayed")]
    if base.block_loop != "fast-dllm-v2":  # v2's loop has no step budget: >= 1 token per forward
        for k in ks:
            steps = (gen // B) * math.ceil(B / k)
            rows.append((f"k={k}", f"{math.ceil(B / k)} steps per {B}-token block, exact cache",
                         ref.with_(steps=steps, cache="exact"), "delayed"))
    return rows


def bench_model(model: "Model", *, label: str, shape: str | None = None, load_s: float = 0.0,
                prompt_ids: list[list[int]], gen_length: int = 128, ks: Sequence[int] = (), repeats: int = 1,
                compile: bool = False) -> BenchReport:
    """Time every setting of bench_configs on the same prompts with an already loaded model."""
    import torch

    from .engine.device import measure_bandwidth

    if gen_length < 1 or repeats < 1 or any(k < 1 for k in ks):
        raise UsageError("--gen-length, repeats and --k must be at least 1")
    from .engine.model import attention_block

    dev = torch.device(model.device)
    scales = list(model.net.buffers()) if hasattr(model, "net") else []  # --quant int8: the fp32 scales
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *scales])
    bandwidth = measure_bandwidth(dev)
    block = attention_block(model)
    base = family_sampler(model.spec.family, block) if block is not None else None
    configs = bench_configs(gen_length, ks, base)
    warm = configs[1][2]
    if base is not None:  # block diffusion: two blocks warm every path (a big shape's run takes minutes)
        warm = warm.with_(gen_length=min(warm.gen_length, 2 * warm.block))
    _timed(model, prompt_ids[0], warm, "delayed", compile)  # warm-up (not timed)
    runs = {name: _time_setting(model, prompt_ids, cfg, refresh, repeats, compile)
            for name, _, cfg, refresh in configs}
    ref = runs["reference"]
    rows = [_row(name, text, runs[name], None if name == "reference" else ref, model.tokens)
            for name, text, _, _ in configs]
    gen_length = configs[0][2].gen_length
    n_params = sum(p.numel() for p in model.parameters())
    active = getattr(getattr(model, "spec", None), "active_param_count", None)
    active_params = active() if active is not None else n_params
    active_bytes = weights * active_params / n_params
    return BenchReport(
        model=label, shape=shape, device=str(dev), dtype=str(model.dtype).replace("torch.", ""),
        gen_length=gen_length, prompts=len(prompt_ids),
        prompt_tokens=statistics.mean(len(p) for p in prompt_ids),
        n_params=n_params, weights_bytes=weights, active_params=active_params,
        active_floor_ms=1e3 * active_bytes / bandwidth,
        bandwidth_gbs=bandwidth / 1e9, floor_ms=1e3 * weights / bandwidth, load_s=load_s,
        repeats=repeats, rows=rows, notes=_notes(dev.type, shape, base), torch_version=torch.__version__)


@dataclass
class _Runs:
    finals: list[list[int]]
    seconds: list[float]
    first: list[float]
    forwards: int
    decoded: int
    peak: int


@dataclass
class _Timer:
    """A generate.run sink: when the first step arrived, the last step, the model's decisions."""

    start: float
    first: float | None = None
    last: DenoiseStep | None = None
    decoded: int = 0  # revealed by the model (early-stop eos fills have confidence 0.0)

    def __call__(self, step: DenoiseStep) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start
        self.decoded += len(step.revealed) - sum(1 for c in step.confidences if c == 0.0)
        self.last = step


def _timed(model: "Model", ids: list[int], cfg: SamplerConfig, refresh: str, compile: bool) -> tuple[_Timer, float]:
    """One generation through the local backend: (its timer, seconds in all)."""
    from .engine.local import LocalBackend

    backend = LocalBackend(model, cache_refresh=refresh, compile=compile)
    timer = _Timer(time.perf_counter())
    generate.run(backend, Request(tuple(ids)), cfg, timer)
    return timer, time.perf_counter() - timer.start


def _time_setting(model: "Model", prompt_ids: list[list[int]], cfg: SamplerConfig, refresh: str,
                  repeats: int, compile: bool) -> _Runs:
    from .engine.device import peak_memory, reset_peak_memory

    dev = model.device
    reset_peak_memory(dev)
    finals: list[list[int]] = []
    seconds: list[float] = []
    first: list[float] = []
    forwards = decoded = 0
    for ids in prompt_ids:
        times = []
        for _ in range(repeats):
            timer, secs = _timed(model, ids, cfg, refresh, compile)
            times.append(secs)
        assert timer.last is not None and timer.first is not None
        finals.append(timer.last.tokens)
        seconds.append(statistics.median(times))
        first.append(timer.first)
        forwards += timer.last.forwards
        decoded += timer.decoded
    return _Runs(finals, seconds, first, forwards, decoded, peak_memory(dev))


def _row(name: str, text: str, runs: _Runs, ref: _Runs | None, tokens: SpecialTokens) -> BenchRow:
    from .engine.sampler import cut_at_stop

    stops = tokens.stops
    n = len(runs.finals[0])
    total, secs = n * len(runs.finals), sum(runs.seconds)
    agreement = identical = None
    if ref is not None:
        agreement = statistics.mean(_agreement(a, b, stops, tokens.eos) for a, b in zip(runs.finals, ref.finals))
        identical = runs.finals == ref.finals
    return BenchRow(
        name=name, settings=text, tokens=total, decoded=runs.decoded,
        answer_tokens=sum(len(cut_at_stop(f, stops)) for f in runs.finals), forwards=runs.forwards,
        seconds=secs, first_frame_s=statistics.mean(runs.first), peak_memory_bytes=runs.peak,
        agreement=agreement, identical=identical, tok_s=total / secs,
        tokens_per_forward=runs.decoded / max(runs.forwards, 1),
        forward_ms=1e3 * secs / max(runs.forwards, 1),
        speedup=None if ref is None else sum(ref.seconds) / secs)


def _agreement(a: list[int], b: list[int], stops: frozenset[int], eos: int) -> float:
    """Share of equal positions once each canvas is cut at its first stop token and eos-padded."""
    from .engine.sampler import cut_at_stop

    def padded(t: list[int]) -> list[int]:
        cut = cut_at_stop(t, stops)
        return cut + [eos] * (len(t) - len(cut))
    pa, pb = padded(a), padded(b)
    return sum(x == y for x, y in zip(pa, pb)) / len(pa)


def _block(gen_length: int) -> int | None:
    default = SamplerConfig().block_length
    return default if default is not None and gen_length % default == 0 else None


def _notes(device_type: str, shape: str | None, base: SamplerConfig | None = None) -> list[str]:
    notes = ["seconds per prompt are the median of the repeats; sums over prompts",
             "agreement: share of equal tokens with the reference output, each cut at its first stop token"]
    if base is not None:
        notes.append(f"block diffusion ({base.block_loop}, blocks of {base.block}): attention is causal across "
                     "blocks, so the exact cache must give the reference's tokens (identical: yes)")
    if shape:
        notes.append("random weights are never confident: threshold decoding commits ~1 token per forward; "
                     "the k rows measure the cost side exactly")
    if device_type == "cpu":
        notes.append("CPU: compute-bound, so the bandwidth floor is not the limit; peak memory is the "
                     "process's max RSS so far (monotone across rows)")
    return notes


def format_report(report: BenchReport) -> str:
    """A plain-text table of the report."""
    gb = 1e9
    head = [f"dllm bench: {report.model} ({report.n_params / 1e6:.1f}M params, {report.dtype} on "
            f"{report.device}, torch {report.torch_version})",
            f"weights {report.weights_bytes / gb:.3f} GB; measured bandwidth {report.bandwidth_gbs:.1f} GB/s; "
            f"floor {report.floor_ms:.3f} ms/forward; load {report.load_s:.2f} s",
            f"{report.prompts} prompts of ~{report.prompt_tokens:.0f} tokens; gen_length {report.gen_length}; "
            f"repeats {report.repeats}", ""]
    moe = 0 < report.active_params < report.n_params
    if moe:
        head.insert(2, f"mixture of experts: {report.active_params / 1e6:.1f}M active params per token; "
                       f"active floor {report.active_floor_ms:.3f} ms/forward (x active in the table)")
    cols = ("setting", "tok/s", "speed-up", "tok/fwd", "forwards", "ms/fwd", "x floor",
            *(("x active",) if moe else ()), "1st frame s", "peak MB", "agreement", "identical")
    lines = [[r.name, f"{r.tok_s:.1f}", "1.00x" if r.speedup is None else f"{r.speedup:.2f}x",
              f"{r.tokens_per_forward:.2f}", str(r.forwards), f"{r.forward_ms:.2f}",
              f"{r.forward_ms / report.floor_ms:.1f}" if report.floor_ms > 0 else "-",
              *((f"{r.forward_ms / report.active_floor_ms:.1f}",) if moe else ()),
              f"{r.first_frame_s:.3f}", f"{r.peak_memory_bytes / 1e6:.0f}",
              "-" if r.agreement is None else f"{100 * r.agreement:.1f}%",
              "-" if r.identical is None else ("yes" if r.identical else "no")] for r in report.rows]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    body = [fmt(cols)] + [fmt(line) for line in lines]
    legend = [""] + [f"{r.name}: {r.settings}" for r in report.rows] + [f"note: {n}" for n in report.notes]
    return "\n".join(head + body + legend + _quant_lines(report)) + "\n"


def _quant_lines(report: BenchReport) -> list[str]:
    q = report.quant_check
    if q is None:
        return []
    return ["", f"--quant {report.quant}: {q.modules} linears as int8; weights {q.weights_bytes / 1e9:.3f} GB "
            f"-> {q.weights_bytes_q / 1e9:.3f} GB ({q.weights_bytes_q / q.weights_bytes:.2f}x)",
            f"logits vs unquantised: max |diff| {q.max_abs:.4g}; relative (L2 per position) max {q.max_rel:.4f}, "
            f"mean {q.mean_rel:.4f}; argmax agreement {100 * q.argmax_agreement:.1f}%",
            f"greedy reference generation (first prompt): {100 * q.greedy_agreement:.1f}% equal tokens, identical: "
            f"{'yes' if q.greedy_identical else 'no'}",
            f"one full forward over the first canvas: {q.forward_ms:.2f} ms unquantised, {q.forward_ms_q:.2f} ms "
            f"int8 ({q.forward_ms_q / q.forward_ms:.2f}x)"]
