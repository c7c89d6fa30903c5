"""The `dllm` command: a Typer app that composes the pipeline; the only place that catches
errors (in `main`): a `DllmError` becomes its one line and exit code, anything else one line
and exit 1 (DLLM_DEBUG=1 re-raises it, traceback included).

Knows: options and their defaults, the model choice order, which stream gets what (people:
stderr; data: stdout), exit codes, and the order of the pipeline:
resolve → load → gather context → build prompt → denoise (live) → decode → parse edits →
build patch → show diff → confirm → apply; in infill mode (stub functions named by the
prompt) each stub's body is denoised between the file's prefix and suffix instead, and the
rewritten files go through the same review.
The review-and-apply path lives in `review.py`, the two streams in `ui.py`, the model choice
and `dllm models` rows in `catalog.py`.
Must not import torch (or the engine) at import time: `dllm --help` and `dllm --version`
stay instant. Heavy imports live inside the command bodies.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from . import __version__
from .catalog import (context_length, describe_model, model_candidates, model_dir, model_name,
                      read_model_config, resolve_model_path)
from .errors import DllmError, PatchError, UsageError
from .review import Report, ReviewOptions, review_edits, review_output
from .ui import Ui, isatty, write_json

EXAMPLES = """Examples:

\b
  dllm code "add a function that returns the mean of a list"
  dllm code "fix the off-by-one in @src/pager.py"   # @path: send that file first
  dllm code "implement median" src/stats.py         # a stub's body: anchored infilling
  dllm code --show-context "make the pager faster"  # what would be sent; loads no model
  pytest -x 2>&1 | dllm code --dry-run "make this test pass" tests/test_pager.py > fix.diff
  dllm apply fix.diff                               # review the diff, then apply it
  dllm undo                                         # restore the files, byte for byte
  dllm models
  dllm bench --json
"""

app = typer.Typer(
    name="dllm",
    help="A terminal coding assistant built on masked-diffusion language models.\n\n" + EXAMPLES,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"dllm {__version__}", flush=True)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None) -> None:
    """dllm: prompt + repository context → live denoising → reviewed patch → atomic apply."""


# ---- dllm code ------------------------------------------------------------------------------

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Checkpoint folder. Default: $DLLM_MODEL, then the user config, then the "
    "embedded model.", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="cpu, cuda, cuda:N, mps or auto (cuda, then mps, then cpu).", show_default=False)]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", help="float32, bfloat16, float16 or auto (bfloat16 on GPU, float32 on CPU).",
    show_default=False)]


@app.command(epilog=EXAMPLES)
def code(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The instruction; '-' reads it from stdin.")],
    paths: Annotated[Optional[List[str]], typer.Argument(metavar="PATHS",
        help="Files or directories to send first (besides @path mentions in the prompt).",
        show_default=False)] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    gen_length: Annotated[Optional[int], typer.Option(help="Tokens to generate (the canvas).",
                                                      show_default="128")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (an upper bound with "
                                                 "--threshold).", show_default="gen-length")] = None,
    block_length: Annotated[Optional[int], typer.Option(help="Semi-autoregressive block size; 0: "
                                                        "one block.", show_default="32, or a divisor "
                                                        "of --gen-length")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 is greedy.", show_default="0")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Commit every token at least this "
                         "confident each step; 0: a fixed schedule.", show_default="0.9")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (replayable runs).")] = None,
    alg: Annotated[Optional[str], typer.Option(help="Remasking: low_confidence, random, origin, "
                   "maskgit_plus, topk_margin, entropy, p2.", show_default="low_confidence")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff on stdout; change nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    no_live: Annotated[bool, typer.Option("--no-live", help="No live canvas; a one-line progress.")] = False,
    show_context: Annotated[bool, typer.Option("--show-context", help="List what would be sent, with token counts "
                                               "(infill mode: the regions), and exit (loads no model).")] = False,
    commit: Annotated[bool, typer.Option("--commit", help="Commit the applied patch (message: the prompt, "
                                         "with a trailer naming the model).")] = False,
    infill: Annotated[Optional[bool], typer.Option("--infill/--no-infill", help="Anchored infilling: "
                      "denoise only the bodies of the stub functions the prompt names, with the code "
                      "around them in view (not the prompt's wording). Default: when there are such "
                      "stubs. --no-infill always asks for a chat-format edit.",
                      show_default=False)] = None,
) -> None:
    """Ask the model for a change; review the diff; apply it (undo with `dllm undo`)."""
    ui = Ui.detect(json_out=json_out, no_live=no_live)
    cfg = sampler_config(gen_length, steps, block_length, temperature, threshold, seed, alg)
    task, stdin_text, notes = read_task(prompt)
    model_path = resolve_model_path(model)
    model_dir(model_path)  # a missing checkpoint is reported before anything loads
    regions = infill_regions(task, paths or [], infill)
    if show_context and regions:
        return show_infill_context(ui, model_path, regions, cfg.gen_length)
    if show_context:
        return show_context_only(ui, model_path, task, paths or [], stdin_text, notes, cfg.gen_length)
    opts = ReviewOptions(yes=yes, dry_run=dry_run, commit_message=task if commit else None,
                         model_name=model_name(model_path))
    if regions:
        if stdin_text or notes:  # notes only say how stdin was cut
            ui.say("dllm: piped input not sent: in infill mode the model sees only the file around "
                   "the region (--no-infill sends it)", style="yellow")
        lm = load(ui, model_path, device, dtype)
        return infill_code(ui, lm, model_path, regions, cfg, opts)
    lm = load(ui, model_path, device, dtype)
    ctx = gather_context(lm.tokenizer, model_path, task, paths or [], stdin_text, notes,
                         cfg.gen_length)
    for line in ctx.report_lines():
        ui.say(f"dllm: {line}", style="yellow")
    prompt_ids = encode_prompt(lm.tokenizer, task, ctx)
    gen = generate(ui, lm, prompt_ids, cfg)
    report = Report(model=opts.model_name, prompt_tokens=len(prompt_ids), gen=gen)
    with report.on_error(ui):
        outcome = review_output(gen.text, ctx.root, opts, ui)
    report.emit(ui, outcome)


def read_task(prompt: str) -> tuple[str, str | None, list[str]]:
    """(task, piped stdin text or None, notes). '-' takes the task itself from stdin."""
    from .context import read_stdin

    text, note = read_stdin(sys.stdin)
    notes = [note] if note else []
    if prompt == "-":
        if not text:
            raise UsageError("PROMPT is '-' but nothing was piped on stdin; pipe the instruction "
                             "or give it as an argument")
        return text.strip(), None, notes
    if not prompt.strip():
        raise UsageError("PROMPT is empty; say what to change, e.g. dllm code \"add a docstring to main\"")
    return prompt, text, notes


def sampler_config(gen_length, steps, block_length, temperature, threshold, seed, alg):
    """SamplerConfig() (fast mode) with the options given; 0 turns block/threshold off.
    --alg p2 (the whole canvas, no blocks or threshold) turns both off unless they are given."""
    from .config import REMASK_ALGS, SamplerConfig, fitting_block

    changes = {k: v for k, v in dict(gen_length=gen_length, steps=steps, temperature=temperature,
                                      seed=seed, alg=alg).items() if v is not None}
    if alg in REMASK_ALGS:
        changes.update(block_length=None, threshold=None, cache="none")
    if block_length is not None:
        changes["block_length"] = block_length or None
    elif gen_length is not None and alg not in REMASK_ALGS:
        changes["block_length"] = fitting_block(gen_length)  # no block asked for: one that divides
    if threshold is not None:
        changes["threshold"] = threshold or None
    return SamplerConfig().with_(**changes)


# ---- model loading ----------------------------------------------------------------------------

def device_choice(name: str | None) -> str:
    """--device > user config > "auto" (cuda, then mps, then cpu; checkpoint.pick_device)."""
    from .config import user_settings

    return name or user_settings().device or "auto"


def dtype_choice(name: str | None) -> str:
    """--dtype > user config > "auto" (bfloat16 on cuda, float16 on mps, float32 on cpu)."""
    from .config import user_settings

    return name or user_settings().dtype or "auto"


def load(ui: Ui, model_path: str, device: str | None, dtype: str | None):
    """The model on its device, with a progress bar on stderr while the weights load."""
    from .render import loading

    name = model_name(model_path)
    with loading(ui.err, name) as describe:  # drawn before torch is imported (1-2 s on a CPU)
        from .checkpoint import load_model, pick_device, pick_dtype

        dev = pick_device(device_choice(device))
        dt = pick_dtype(dtype_choice(dtype), dev)
        describe(f"{name} ({str(dt).replace('torch.', '')}) on {dev}")
        return load_model(model_path, device=dev, dtype=dt)


# ---- context and prompt ----------------------------------------------------------------------

PROMPT_MARGIN = 8  # tokens kept free: the chat template's joins may merge differently


def gather_context(tokenizer, model_path: str, task: str, paths: list[str], stdin_text: str | None,
                   notes: list[str], gen_length: int):
    """Files and stdin that fit: model context − prompt overhead − gen_length."""
    from .context import gather
    from .prompt import build_messages

    config = read_model_config(model_dir(model_path))
    empty = tokenizer.apply_chat_template([m.as_dict() for m in build_messages(task)])
    overhead = len(tokenizer.encode(empty)) + PROMPT_MARGIN
    budget = context_length(config) - overhead - gen_length
    if budget < 0:
        raise UsageError(f"the prompt and --gen-length {gen_length} do not fit the model's "
                         f"{context_length(config)}-token context; shorten the prompt or lower --gen-length")
    return gather(task, paths, count_tokens=lambda text: len(tokenizer.encode(text)), budget=budget,
                  stdin_text=stdin_text, notes=notes)


def encode_prompt(tokenizer, task: str, ctx) -> list[int]:
    """The chat-templated request (files, stdin, task) as token ids."""
    from .prompt import build_messages

    messages = build_messages(task, ctx.files, ctx.stdin_text)
    return tokenizer.encode(tokenizer.apply_chat_template([m.as_dict() for m in messages]))


def show_context_only(ui: Ui, model_path: str, task: str, paths: list[str], stdin_text: str | None,
                      notes: list[str], gen_length: int) -> None:
    """--show-context: the tokenizer alone (no torch), then the table on stdout."""
    from .render import render_context
    from .tokenizer import Tokenizer

    folder = model_dir(model_path)
    tokenizer = Tokenizer.from_dir(folder, read_model_config(folder))
    ctx = gather_context(tokenizer, model_path, task, paths, stdin_text, notes, gen_length)
    if ui.json:
        data = {"root": str(ctx.root), "budget": ctx.budget, "tokens": ctx.tokens,
                "files": [{"path": f.path, "tokens": f.tokens, "reason": f.reason} for f in ctx.files],
                "stdin_tokens": ctx.stdin_tokens,
                "skipped": [{"path": s.path, "reason": s.reason, "ranked": s.ranked} for s in ctx.skipped],
                "notes": list(ctx.notes)}
        write_json(ui, data)
        return
    render_context(ui.out, ctx)


# ---- denoising ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Generation:
    text: str  # the decoded answer, cut at the first stop token
    gen_tokens: int
    steps: int
    forwards: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.gen_tokens / self.seconds if self.seconds > 0 else 0.0


def generate(ui: Ui, lm, prompt_ids: list[int], cfg, suffix_ids: list[int] | None = None) -> Generation:
    """Denoise with the live view on stderr; decode the answer once at the end. With
    `suffix_ids` the canvas sits between the prompt and that fixed suffix (infilling); for a
    DreamOn checkpoint (an `<|expand|>` token) that canvas grows and shrinks (dreamon.py)."""
    from .dreamon import delete_token_id, denoise_dreamon, dreamon_sampler, expand_token_id
    from .render import DenoiseView, TokenTexts
    from .sampler import cut_at_stop, denoise

    tok = lm.tokenizer
    texts = TokenTexts(tok.decode, hidden=lm.stop_token_ids)
    mode = "live" if ui.live else ("quiet" if ui.json else "line")
    view = DenoiseView(ui.err, texts, lm.mask_token_id, cfg.gen_length, mode=mode)
    expand = expand_token_id(lm) if suffix_ids is not None else None
    if expand is not None:  # a DreamOn checkpoint: the body may grow and shrink
        steps = denoise_dreamon(lm, prompt_ids, suffix_ids, dreamon_sampler(cfg), expand_id=expand,
                                delete_id=delete_token_id(lm))
    else:
        steps = denoise(lm, prompt_ids, cfg, suffix_ids=suffix_ids)
    last = None
    with view:
        for step in steps:
            view.update(step)
            last = step
    assert last is not None and last.done, "denoise() ended without a done step"
    answer = [t for t in cut_at_stop(last.tokens, lm.stop_token_ids) if t != lm.mask_token_id]
    text = tok.decode(answer, skip_special=True)
    view.finish(None if ui.json else text)
    return Generation(text, len(answer), last.index + 1, last.forwards, last.elapsed)


# ---- anchored infilling -------------------------------------------------------------------------

MAX_INFILL_REGIONS = 8  # stub bodies filled in one run
INFILL_CONTEXT_CAP = 4096  # positions around one region (prefix + canvas + suffix)


def infill_regions(task: str, paths: list[str], wanted: bool | None) -> list:
    """Stub-function bodies the task asks for (infill.stub_regions) in the named files, or in
    the tracked Python files when none is named. --no-infill: none; --infill: at least one."""
    from .context import source_files
    from .infill import stub_regions

    if wanted is False:
        return []
    regions = stub_regions(source_files(task, paths), task)
    if wanted and not regions:
        raise UsageError("--infill: no stub function (body `...`, `pass` or `raise NotImplementedError`) "
                         "named in the prompt was found; name the function and its file, or drop --infill")
    return regions[:MAX_INFILL_REGIONS]


def infill_code(ui: Ui, lm, model_path: str, regions: list, cfg, opts: "ReviewOptions") -> None:
    """Fill each region with the model (bottom-up per file), then review one patch of all files."""
    from .edits import Edit

    root = work_root()
    context = infill_context(model_path)
    texts: dict[str, str] = {}
    gens: list[Generation] = []
    prompt_tokens = 0
    for r in sorted(regions, key=lambda r: (r.path, -r.start)):
        text = texts.get(r.path)
        if text is None:
            text = (root / r.path).read_text(encoding="utf-8").replace("\r\n", "\n")
        new, gen, used = fill_region(ui, lm, text, r, cfg, context)
        texts[r.path] = new
        gens.append(gen)
        prompt_tokens += used
    gen = Generation("".join(g.text for g in reversed(gens)), sum(g.gen_tokens for g in gens),
                     sum(g.steps for g in gens), sum(g.forwards for g in gens), sum(g.seconds for g in gens))
    report = Report(model=opts.model_name, prompt_tokens=prompt_tokens, gen=gen)
    for path, text in texts.items():
        problem = syntax_problem(path, text)
        if problem:
            ui.say(f"dllm: warning: {path} would not compile with this body ({problem}); "
                   "read the diff before applying", style="yellow")
    edits = [Edit(path, None, text, "whole_file") for path, text in texts.items()]
    with report.on_error(ui):
        outcome = review_edits(edits, root, opts, ui)
    report.emit(ui, outcome)


def syntax_problem(path: str, text: str) -> str | None:
    """For a Python file: the first syntax error of `text` ("line N: message"), else None.
    Only compiled, never run."""
    if not path.endswith(".py"):
        return None
    try:
        compile(text, path, "exec", dont_inherit=True)
    except SyntaxError as err:
        return f"line {err.lineno}: {err.msg}"
    except ValueError as err:  # e.g. a NUL byte in the generated text
        return str(err)
    return None


def infill_context(model_path: str) -> int:
    """Positions one infill canvas may span: the model's context, at most INFILL_CONTEXT_CAP."""
    return min(context_length(read_model_config(model_dir(model_path))), INFILL_CONTEXT_CAP)


def region_canvas(tok, text: str, region, gen_length: int, context: int, eos_id: int):
    """(prefix, suffix, ids before the masks, ids after them) of `region` in `text`."""
    from .infill import canvas, split

    prefix, _, suffix = split(text, region.start, region.end)
    try:
        pre, suf = canvas(tok.encode(prefix), tok.encode(suffix), gen_length, context, eos_id)
    except ValueError:
        raise UsageError(f"--gen-length {gen_length} leaves no room for the file around it in the "
                         f"model's {context}-token context; lower --gen-length") from None
    return prefix, suffix, pre, suf


def show_infill_context(ui: Ui, model_path: str, regions: list, gen_length: int) -> None:
    """--show-context in infill mode: each region and the tokens of file around it (the
    tokenizer alone; counted on the files as they are, before any region is filled)."""
    from .render import render_infill_context
    from .tokenizer import Tokenizer

    folder = model_dir(model_path)
    tok = Tokenizer.from_dir(folder, read_model_config(folder))
    context, root = infill_context(model_path), work_root()
    rows = []
    for r in regions:
        text = (root / r.path).read_text(encoding="utf-8").replace("\r\n", "\n")
        _, _, pre, suf = region_canvas(tok, text, r, gen_length, context, tok.eos_token_id)
        rows.append({"path": r.path, "function": r.name, "lines": [r.start + 1, r.end],
                     "prefix_tokens": len(pre), "suffix_tokens": len(suf)})
    if ui.json:
        write_json(ui, {"mode": "infill", "root": str(root), "gen_length": gen_length,
                         "context": context, "regions": rows})
        return
    render_infill_context(ui.out, rows, gen_length, context)


def fill_region(ui: Ui, lm, text: str, region, cfg, context: int) -> tuple[str, Generation, int]:
    """(the file with the region rewritten, the generation, context tokens sent)."""
    prefix, suffix, pre, suf = region_canvas(lm.tokenizer, text, region, cfg.gen_length, context,
                                             lm.eos_token_id)
    what = f"the body of {region.name}" if region.name else "the region"
    ui.say(f"dllm: filling {what} in {region.path} (lines {region.start + 1}-{region.end}; "
           f"{len(pre) + len(suf)} tokens of context)")
    gen = generate(ui, lm, pre, cfg, suffix_ids=suf)
    body = gen.text if gen.text.endswith("\n") else gen.text + "\n"
    if not body.strip():
        raise PatchError(f"{region.path}: the model wrote nothing for {what}; raise --gen-length, "
                         "or try --no-infill")
    return prefix + body + suffix, gen, len(pre) + len(suf)


# ---- dllm apply / undo ------------------------------------------------------------------------

@app.command("apply")
def apply_command(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="A unified diff file, or '-' for stdin.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check it and print the diff dllm would apply.")] = False,
) -> None:
    """Apply a unified diff through the same checks (paths, hunks, atomic write, undo journal)."""
    from .edits import parse_unified_diff

    ui = Ui.detect()
    text = _read_source(source)
    root = work_root()
    edits = parse_unified_diff(text)
    if not edits:
        raise PatchError(f"{source}: no unified diff found (expected ---/+++ headers and @@ hunks)")
    review_edits(edits, root, ReviewOptions(yes=yes, dry_run=dry_run, save=False), ui)


def _read_source(source: str) -> str:
    if source == "-":
        if isatty(sys.stdin):
            raise UsageError("FILE is '-' but stdin is a terminal; pipe a diff: git diff | dllm apply -")
        return sys.stdin.read()
    try:
        return Path(source).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: cannot read the diff ({getattr(exc, 'strerror', None) or exc})") from None


def work_root() -> Path:
    """The git work tree containing the current directory, else the current directory."""
    from .context import find_root

    return find_root(Path.cwd()) or Path.cwd().resolve()


@app.command()
def undo() -> None:
    """Restore the files of the last applied patch, byte for byte (refused if they changed since)."""
    from .patch import state_dir_for, undo as undo_patch

    ui = Ui.detect()
    root = work_root()
    restored = undo_patch(root, state_dir=state_dir_for(root))
    files = getattr(restored, "files", None) or restored
    names = ", ".join(str(f) for f in files) if isinstance(files, (list, tuple)) else ""
    ui.say(f"dllm: undone{': ' + names if names else ''}", style="green")


# ---- dllm models --------------------------------------------------------------------------------

@app.command()
def models(
    paths: Annotated[Optional[List[Path]], typer.Argument(metavar="PATHS", help="More checkpoint folders to describe.",
                                                          show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list on stdout.")] = False,
) -> None:
    """List local checkpoints: the embedded default, $DLLM_MODEL, the user config, the folders in
    <config dir>/models, and PATHS (family, size, dtype, licence; reads no weights)."""
    ui = Ui.detect(json_out=json_out)
    chosen = resolve_model_path(None)
    rows = [describe_model(source, folder, chosen) for source, folder in model_candidates(paths or [])]
    if json_out:
        write_json(ui, rows)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("", "name", "family", "params", "dtype", "context", "licence", "source", "path"):
        table.add_column(column)
    for r in rows:
        table.add_row("*" if r["chosen"] else "", r["name"], r["family"], r["params_human"], r["dtype"],
                      str(r["context"] or "-"), r["licence"], r["source"], r["path"])
    ui.out.print(table)
    ui.say("* = the model `dllm code` uses now (--model > $DLLM_MODEL > user config > default)")


# ---- dllm bench ---------------------------------------------------------------------------------

@app.command()
def bench(
    model: ModelOpt = None,
    shape: Annotated[Optional[str], typer.Option(help="Random weights of a published shape on the "
                     "device instead of a checkpoint: dream-7b, llada-8b, open-dcoder-0.5b.",
                     show_default=False)] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    gen_length: Annotated[int, typer.Option(help="Tokens generated per run.")] = 128,
    k: Annotated[Optional[List[int]], typer.Option("--k", help="Also time a fixed k tokens committed "
                 "per forward (repeatable: --k 1 --k 2).", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Time the reference loop against the default fast mode in one process; report the ratios."""
    from .bench import format_report, run_bench

    ui = Ui.detect(json_out=json_out)
    model_path = model if shape else resolve_model_path(model)  # both given: bench says so
    report = run_bench(model_path, shape=shape, device=device_choice(device), dtype=dtype_choice(dtype),
                       gen_length=gen_length, ks=tuple(k or ()))
    if json_out:
        write_json(ui, report.as_dict())
    else:
        ui.out.file.write(format_report(report).rstrip("\n") + "\n")
        ui.out.file.flush()


# ---- the edge -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; turn DllmError into one line on stderr and its exit code."""
    # Before torch is imported: OpenMP threads that spin while idle made CPU denoising 26x slower
    # on a 2-core machine with other work running (13.3 s vs 0.5 s for 32 tokens). A value the
    # user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        _run(argv)
    except SystemExit as done:
        if argv is None and "torch" in sys.modules:
            _exit_now(done.code)
        raise


def _exit_now(code) -> None:
    """Leave without the interpreter's teardown, which spends 0.3-0.8 s freeing torch's modules
    after the work is done. Safe here: every file write is complete (atomic renames) and the
    two streams are flushed first. Only for the console script (main() without argv)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _run(argv: list[str] | None) -> None:
    try:
        result = app(args=argv, prog_name="dllm", standalone_mode=False)
    except DllmError as err:
        _fail(str(err), err.exit_code)
    except (KeyboardInterrupt, typer.Abort):  # typer maps Ctrl-C to Exit(130), EOF to Abort
        _fail("interrupted; nothing was changed", 130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as err:  # click's usage errors (exit 2)
        err.show()
        sys.exit(getattr(err, "exit_code", 2))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except Exception as exc:  # not a DllmError: still one line (DLLM_DEBUG=1: the traceback)
        if os.environ.get("DLLM_DEBUG"):
            raise
        _fail(unexpected(exc), 1)
    if result == 130:
        _fail("interrupted; nothing was changed", 130)
    sys.exit(result if isinstance(result, int) else 0)


def unexpected(exc: Exception) -> str:
    """The one-line message for an exception that is not a DllmError."""
    if type(exc).__name__ == "OutOfMemoryError":  # torch's, raised mid-run (no torch import here)
        return ("out of memory on the device while running the model; lower --gen-length, "
                "use --dtype bfloat16, or --device cpu")
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return (f"unexpected {type(exc).__name__}: {exc} (a bug in dllm; rerun with DLLM_DEBUG=1 for "
            "the traceback and report it)")


def _fail(message: str, code: int) -> None:
    line = " ".join(message.split())
    print(f"dllm: error: {line}" if code not in (4, 130) else f"dllm: {line}", file=sys.stderr, flush=True)
    sys.exit(code)
