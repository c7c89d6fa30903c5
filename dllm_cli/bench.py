"""Measured runs behind `dllm bench`: the reference loop and the fast default, side by side.

Knows: how to time `sampler.denoise` honestly in one process (same prompts, same model, a
warm-up first), what to report (tok/s, tokens committed per forward, forwards, per-forward ms
next to the bandwidth floor, time to first frame, load time, peak memory, agreement of each
setting with the reference output), and how to measure device memory bandwidth (a large
tensor copy). Must not: print (format_report returns text; the CLI writes it), or invent a
figure — every number in a BenchReport was measured in this run.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from .config import SamplerConfig
from .errors import UsageError
from .sampler import cut_at_stop, denoise

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
    torch_version: str = torch.__version__

    def as_dict(self) -> dict:
        return asdict(self)

    def row(self, name: str) -> BenchRow:
        return next(r for r in self.rows if r.name == name)


def run_bench(model_path: str | None, *, shape: str | None = None, device: str | None = "cpu",
              dtype: str | None = "float32", gen_length: int = 128, prompts: list[str] | None = None,
              ks=(), repeats: int = 1, compile: bool = False) -> BenchReport:
    """Load a checkpoint (or random weights of a published `shape`) and bench it."""
    from .checkpoint import PUBLISHED_SHAPES, load_model, pick_device, pick_dtype, random_model

    if shape is not None and model_path is not None:
        raise UsageError("use either --model or --shape, not both")
    if shape is not None and shape not in PUBLISHED_SHAPES:
        raise UsageError(f"unknown --shape {shape!r}; choose one of {', '.join(PUBLISHED_SHAPES)}")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    start = time.perf_counter()
    if shape is not None:
        model = random_model(PUBLISHED_SHAPES[shape], device=dev, dtype=dt)
    else:
        model = load_model(model_path or "default", device=dev, dtype=dt)
    _sync(dev)
    load_s = time.perf_counter() - start
    label = shape and f"random weights, {shape} shape" or str(model_path or "default")
    return bench_model(model, label=label, shape=shape, load_s=load_s,
                       prompt_ids=prompt_token_ids(model, prompts), gen_length=gen_length, ks=ks,
                       repeats=repeats, compile=compile)


def prompt_token_ids(model, prompts: list[str] | None = None) -> list[list[int]]:
    """The tasks rendered through the model's chat template and encoded; fixed random ids for a
    model without a tokenizer (random weights of a published shape)."""
    tasks = list(prompts or BENCH_TASKS)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        gen = torch.Generator().manual_seed(0)
        top = min(model.mask_token_id, 10_000)  # ordinary tokens in every published vocabulary
        return [torch.randint(0, top, (SYNTHETIC_PROMPT_TOKENS,), generator=gen).tolist() for _ in tasks]
    from .prompt import build_messages

    out = []
    for task in tasks:
        text = tok.apply_chat_template(build_messages(task)) if tok.chat_template else task
        out.append(tok.encode(text))
    return out


def bench_configs(gen_length: int, ks=()) -> list[tuple[str, str, SamplerConfig, str]]:
    """(name, description, config, cache_refresh) of every timed setting; the reference first."""
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


def bench_model(model, *, label: str, shape: str | None = None, load_s: float = 0.0,
                prompt_ids: list[list[int]], gen_length: int = 128, ks=(), repeats: int = 1,
                compile: bool = False) -> BenchReport:
    """Time every setting of bench_configs on the same prompts with an already loaded model."""
    if gen_length < 1 or repeats < 1 or any(k < 1 for k in ks):
        raise UsageError("--gen-length, repeats and --k must be at least 1")
    dev = torch.device(model.device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = measure_bandwidth(dev)
    configs = bench_configs(gen_length, ks)
    list(denoise(model, prompt_ids[0], configs[1][2], compile=compile))  # warm-up (not timed)
    runs = {name: _time_setting(model, prompt_ids, cfg, refresh, repeats, compile)
            for name, _, cfg, refresh in configs}
    ref = runs["reference"]
    rows = [_row(name, text, runs[name], None if name == "reference" else ref, model)
            for name, text, _, _ in configs]
    return BenchReport(
        model=label, shape=shape, device=str(dev), dtype=str(model.dtype).replace("torch.", ""),
        gen_length=gen_length, prompts=len(prompt_ids),
        prompt_tokens=statistics.mean(len(p) for p in prompt_ids),
        n_params=sum(p.numel() for p in model.parameters()), weights_bytes=weights,
        bandwidth_gbs=bandwidth / 1e9, floor_ms=1e3 * weights / bandwidth, load_s=load_s,
        repeats=repeats, rows=rows, notes=_notes(dev, shape))


@dataclass
class _Runs:
    finals: list[list[int]]
    seconds: list[float]
    first: list[float]
    forwards: int
    decoded: int
    peak: int


def _time_setting(model, prompt_ids, cfg, refresh, repeats, compile) -> _Runs:
    dev = torch.device(model.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    finals, seconds, first, forwards, decoded = [], [], [], 0, 0
    for ids in prompt_ids:
        times = []
        for _ in range(repeats):
            start, t_first, last, n_dec = time.perf_counter(), None, None, 0
            for step in denoise(model, ids, cfg, cache_refresh=refresh, compile=compile):
                t_first = t_first if t_first is not None else time.perf_counter() - start
                n_dec += len(step.revealed) - sum(1 for c in step.confidences if c == 0.0)
                last = step
            times.append(time.perf_counter() - start)
        finals.append(last.tokens)
        seconds.append(statistics.median(times))
        first.append(t_first)
        forwards += last.forwards
        decoded += n_dec
    return _Runs(finals, seconds, first, forwards, decoded, _peak_memory(dev))


def _row(name, text, runs: _Runs, ref: _Runs | None, model) -> BenchRow:
    stops = model.stop_token_ids
    n = len(runs.finals[0])
    tokens, secs = n * len(runs.finals), sum(runs.seconds)
    agreement = None
    if ref is not None:
        agreement = statistics.mean(_agreement(a, b, stops, model.eos_token_id)
                                    for a, b in zip(runs.finals, ref.finals))
    return BenchRow(
        name=name, settings=text, tokens=tokens, decoded=runs.decoded,
        answer_tokens=sum(len(cut_at_stop(f, stops)) for f in runs.finals), forwards=runs.forwards,
        seconds=secs, first_frame_s=statistics.mean(runs.first), peak_memory_bytes=runs.peak,
        agreement=agreement, tok_s=tokens / secs, tokens_per_forward=runs.decoded / max(runs.forwards, 1),
        forward_ms=1e3 * secs / max(runs.forwards, 1),
        speedup=None if ref is None else sum(ref.seconds) / secs)


def _agreement(a: list[int], b: list[int], stops, eos: int) -> float:
    """Share of equal positions once each canvas is cut at its first stop token and eos-padded."""
    def padded(t):
        cut = cut_at_stop(t, stops)
        return cut + [eos] * (len(t) - len(cut))
    pa, pb = padded(a), padded(b)
    return sum(x == y for x, y in zip(pa, pb)) / len(pa)


def measure_bandwidth(device: torch.device, nbytes: int | None = None, iters: int = 5) -> float:
    """Device memory bandwidth in bytes/s from a large tensor copy (read + write counted)."""
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 27)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page in, allocate
    _sync(device)
    best = math.inf
    for _ in range(iters):
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def _peak_memory(dev: torch.device) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; process-wide


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def _block(gen_length: int) -> int | None:
    default = SamplerConfig().block_length
    return default if gen_length % default == 0 else None


def _notes(dev: torch.device, shape: str | None) -> list[str]:
    notes = ["seconds per prompt are the median of the repeats; sums over prompts",
             "agreement: share of equal tokens with the reference output, each cut at its first stop token"]
    if shape:
        notes.append("random weights are never confident: threshold decoding commits ~1 token per forward; "
                     "the k rows measure the cost side exactly")
    if dev.type == "cpu":
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
    cols = ("setting", "tok/s", "speed-up", "tok/fwd", "forwards", "ms/fwd", "x floor", "1st frame s",
            "peak MB", "agreement")
    lines = [[r.name, f"{r.tok_s:.1f}", "1.00x" if r.speedup is None else f"{r.speedup:.2f}x",
              f"{r.tokens_per_forward:.2f}", str(r.forwards), f"{r.forward_ms:.2f}",
              f"{r.forward_ms / report.floor_ms:.1f}" if report.floor_ms > 0 else "-",
              f"{r.first_frame_s:.3f}", f"{r.peak_memory_bytes / 1e6:.0f}",
              "-" if r.agreement is None else f"{100 * r.agreement:.1f}%"] for r in report.rows]
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                for i, (v, w) in enumerate(zip(row, widths)))
    body = [fmt(cols)] + [fmt(l) for l in lines]
    legend = [""] + [f"{r.name}: {r.settings}" for r in report.rows] + [f"note: {n}" for n in report.notes]
    return "\n".join(head + body + legend) + "\n"
