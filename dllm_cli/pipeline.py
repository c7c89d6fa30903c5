"""`dllm code`, start to finish, as one readable pipeline; the CLI only parses options into a
`CodeOptions` and calls `code(opts, ui)`.

    [--endpoint: open it] → inspect the checkpoint → tokenizer → the infill plan (stub bodies
    the task names) → [--show-context: list and stop] → the backend (the endpoint, else a warm
    `dllm serve` of the same checkpoint, else a local load) → chat mode: gather files → measure
    the templated prompt → generate (live) → parse edits; infill mode: each region's canvas
    between its prefix and suffix → generate (live) → the rewritten files → review → --json report

Knows: the order of the steps and which module does each; the two modes' rules (in infill mode
the model sees only the file around the region, never the prompt's wording or piped stdin); how
a remote model's prompt is measured (its own checkpoint when --model names a local folder, else
the embedded model's tokenizer with the endpoint's context length, which counts code
conservatively, and only the file window around a region is sent).
Must not: import torch (the backend does, when it loads), parse options, or catch errors for
the user (cli.py's edge does).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from . import catalog, generate, infill
from .backend import Backend, open_local
from .catalog import Checkpoint
from .config import SamplerConfig, family_sampler
from .context import Tree, gather, named_files, source_files
from .edits import Edit
from .errors import DllmError, PatchError, UsageError
from .events import Generation, Request
from .prompt import ChatPrompt, encode_chat, file_budget
from .remote import RemoteBackend
from .report import CodeReport, ContextReport, InfillContextReport, RegionRow
from .review import Outcome, ReviewOptions, review_edits, review_output
from .tokenizer import Tokenizer
from .ui import Ui


@dataclass(frozen=True)
class CodeOptions:
    """Everything `dllm code` was asked, already validated (the CLI builds it; so can Python)."""

    task: str
    paths: tuple[str, ...] = ()
    stdin_text: str | None = None
    notes: tuple[str, ...] = ()  # what the user should know about the input (stdin was cut)
    model: str | None = None  # checkpoint folder; None: the embedded default
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "none"  # "int8": weight-only int8 linears (engine/quant.py)
    cfg: SamplerConfig = field(default_factory=SamplerConfig)
    infill: bool | None = None  # True: --infill, False: --no-infill, None: when there are stubs
    show_context: bool = False
    review: ReviewOptions = field(default_factory=ReviewOptions)
    endpoint: str | None = None  # a URL or preset name (--endpoint, $DLLM_ENDPOINT, config); None: local
    api_key_env: str | None = None  # the variable that holds the endpoint's key; None: the preset's
    no_server: bool = False  # never use a running `dllm serve`: load the model here
    timeout: float = 120.0  # seconds an endpoint may stay silent
    home: Path | None = None  # the dllm home whose discovery files name running servers; None: none
    # The command-line sampler options (SamplerConfig.from_options keywords): when given, `cfg` is
    # rebuilt from them over the checkpoint family's default (family_defaults); None: `cfg` as is.
    sampler_options: dict[str, Any] | None = None


def code(opts: CodeOptions, ui: Ui, backend: Backend | None = None, cwd: Path | None = None) -> None:
    """Run `dllm code`. `backend`: an already open one (a test's scripted model, a server);
    None: `opts.endpoint`, else a warm `dllm serve` of the checkpoint, else a local load of it."""
    exact = True  # the prompt is measured with the model's own tokenizer
    if backend is None and opts.endpoint:
        remote, ckpt, exact = open_remote(ui, opts)
        if not exact:  # the served model's recipe is the server's: send only what was asked
            remote.options = extension_options(opts.sampler_options)
        backend = remote
        opts = replace(opts, review=replace(opts.review, model_name=remote.name))
    else:
        ckpt = catalog.inspect(opts.model)
    opts = family_defaults(opts, ckpt, served_elsewhere=not exact)
    tokenizer = Tokenizer.from_checkpoint(ckpt)
    tree = Tree.open(cwd or Path.cwd())
    regions = infill_plan(opts, tree)
    if opts.show_context:
        return show_infill_context(ui, ckpt, tokenizer, tree, regions, opts.cfg) if regions else \
            show_context(ui, ckpt, tokenizer, tree, opts)
    if regions and (opts.stdin_text or opts.notes):  # notes only say how stdin was cut
        ui.say("dllm: piped input not sent: in infill mode the model sees only the file around "
               "the region (--no-infill sends it)", style="yellow")
    backend = backend or warm(ui, ckpt, opts) or load(ui, ckpt, tokenizer, opts.device, opts.dtype, opts.quant)
    if regions:
        fill_regions(ui, backend, ckpt, tokenizer, tree, regions, opts, window_text=not exact)
    else:
        chat(ui, backend, ckpt, tokenizer, tree, opts)


def open_remote(ui: Ui, opts: CodeOptions) -> tuple[RemoteBackend, Checkpoint, bool]:
    """The endpoint as a backend, the checkpoint that measures its prompts, and whether that is
    exact: --model naming a local checkpoint folder (served elsewhere by `dllm serve`) is; else
    the embedded model's tokenizer with the endpoint's context length (a conservative count)."""
    from .errors import CheckpointError
    from .remote import open_endpoint

    assert opts.endpoint is not None
    folder = Path(opts.model).expanduser() if opts.model else None
    local = catalog.inspect(folder) if folder is not None and (folder / "config.json").is_file() else None
    remote = open_endpoint(opts.endpoint, local.name if local else opts.model, opts.api_key_env, opts.timeout,
                           opts.home)
    ui.say(f"dllm: using {remote.describe(opts.cfg)}", style="dim")
    if local is not None:
        return remote, local, True
    try:
        base = catalog.inspect(None)
    except CheckpointError as err:
        raise CheckpointError(f"prompts for a remote model are measured with the embedded model's tokenizer: "
                              f"{err}") from None
    return remote, replace(base, name=remote.name, context_length=remote.context_length), False


def warm(ui: Ui, ckpt: Checkpoint, opts: CodeOptions) -> Backend | None:
    """A running `dllm serve` of this checkpoint (its discovery file, checked alive), unless
    --no-server; None: load the model here."""
    if opts.no_server or opts.home is None:
        return None
    from . import discovery
    from .remote import DEFAULT_KEY_ENV, open_server

    entry = discovery.find(opts.home, ckpt.folder, opts.device, opts.dtype, opts.quant)
    if entry is None:
        return None
    backend = open_server(entry, opts.api_key_env, opts.timeout)
    if backend is None:
        ui.say(f"dllm: the server at {entry.url} needs a key and ${opts.api_key_env or DEFAULT_KEY_ENV} is not "
               "set; loading the model here", style="yellow")
        return None
    weights = ", int8 weights" if entry.quant == "int8" else ""
    ui.say(f"dllm: using the warm server at {entry.url} (pid {entry.pid}{weights}); --no-server loads the model here",
           style="dim")
    return backend


def family_defaults(opts: CodeOptions, ckpt: Checkpoint, served_elsewhere: bool = False) -> CodeOptions:
    """What the checkpoint's family changes: the sampler starts from its recipe
    (config.family_sampler: block-diffusion families their own loop and block, the others
    dllm's fast mode) with the command-line options over it; a block-diffusion checkpoint is
    asked in chat mode (its attention is causal across blocks: it cannot see a suffix).
    served_elsewhere: `ckpt` only measures prompts for a remote model whose family dllm does not
    know; the server applies the options over its own recipe (extension_options), so here they
    only set the canvas (LLaDA2's editing option is the server's to check)."""
    cfg, infill = opts.cfg, opts.infill
    if opts.sampler_options is not None:
        options = dict(opts.sampler_options)
        if served_elsewhere:
            options.pop("editing_threshold", None)
            cfg = SamplerConfig.from_options(None, **options)
        else:
            cfg = SamplerConfig.from_options(family_sampler(ckpt.family, ckpt.attention_block), **options)
    if ckpt.attention_block is not None:
        if infill:
            raise UsageError(f"--infill: {ckpt.name} is a block-diffusion model (attention causal across blocks), "
                             "which cannot fill a region between code before and after it; drop --infill")
        infill = False
    return replace(opts, cfg=cfg, infill=infill)


def extension_options(sampler_options: dict[str, Any] | None) -> dict[str, Any]:
    """The sampler options given on the command line, as dllm's extension object names them
    (`dllm serve` applies them over the served family's recipe; docs/serve.md)."""
    from .serve.wire import EXTENSION_KEYS

    return {k: v for k, v in (sampler_options or {}).items() if k in EXTENSION_KEYS and v is not None}


def load(ui: Ui, ckpt: Checkpoint, tokenizer: Tokenizer, device: str, dtype: str, quant: str = "none") -> Backend:
    """The local engine with the checkpoint loaded, under a progress bar drawn before torch is
    imported (1-2 s on a CPU); its label gains the device and dtype once they are known."""
    from .render import loading

    with loading(ui.err, ckpt.name) as describe:
        return open_local(ckpt, device, dtype, tokenizer, describe, quant=quant)


def generate_live(ui: Ui, backend: Backend, request: Request, cfg: SamplerConfig) -> Generation:
    """One generation with the live view on stderr (a line of progress without a TTY, nothing
    but the summary with --json); the final text is printed once, then the summary."""
    from .render import DenoiseView

    mode = "live" if ui.live else ("quiet" if ui.json else "line")
    view = DenoiseView(ui.err, backend.token_text, backend.tokens, cfg.gen_length, mode=mode)
    with view:
        gen = generate.run(backend, request, cfg, view.update, view.update_text)
    view.finish(gen, show_text=not ui.json)
    return gen


def finish(ui: Ui, model: str, gen: Generation, review: Callable[[Outcome], Outcome],
           endpoint: str | None = None) -> None:
    """Review the generation's answer; with --json, the report is printed also when it fails."""
    outcome = Outcome()
    try:
        review(outcome)
    except DllmError as err:
        if ui.json:
            ui.write_json(CodeReport(model, gen, outcome, err, endpoint).as_dict())
        raise
    if ui.json:
        ui.write_json(CodeReport(model, gen, outcome, endpoint=endpoint).as_dict())


def endpoint_of(backend: Backend) -> str | None:
    """The base URL a remote backend talks to (the --json report's "endpoint"); None: local."""
    return backend.url if isinstance(backend, RemoteBackend) else None


# ---- chat mode ----------------------------------------------------------------------------------

def chat_prompt(ckpt: Checkpoint, tokenizer: Tokenizer, tree: Tree, opts: CodeOptions) -> ChatPrompt:
    """Files and stdin that fit, in the chat-templated prompt as it will be sent."""
    gen_length = opts.cfg.gen_length
    budget = file_budget(tokenizer, opts.task, ckpt.context_length, gen_length)
    ctx = gather(opts.task, opts.paths, count_tokens=lambda text: len(tokenizer.encode(text)),
                 budget=budget, stdin_text=opts.stdin_text, tree=tree, notes=opts.notes)
    return encode_chat(tokenizer, opts.task, ctx, ckpt.context_length - gen_length)


def chat(ui: Ui, backend: Backend, ckpt: Checkpoint, tokenizer: Tokenizer, tree: Tree,
         opts: CodeOptions) -> None:
    prompt = chat_prompt(ckpt, tokenizer, tree, opts)
    for line in prompt.context.report_lines():
        ui.say(f"dllm: {line}", style="yellow")
    gen = generate_live(ui, backend, Request(prompt.ids, messages=prompt.messages), opts.cfg)
    finish(ui, ckpt.name, gen, lambda outcome: review_output(gen.text, tree.root, opts.review, ui, outcome),
           endpoint_of(backend))


def show_context(ui: Ui, ckpt: Checkpoint, tokenizer: Tokenizer, tree: Tree, opts: CodeOptions) -> None:
    """--show-context in chat mode: the table (or --json) on stdout; the tokenizer alone, no torch."""
    prompt = chat_prompt(ckpt, tokenizer, tree, opts)
    if ui.json:
        ui.write_json(ContextReport(prompt.context).as_dict())
        return
    from .render import render_context

    render_context(ui.out, prompt.context)


# ---- infill mode --------------------------------------------------------------------------------

def infill_plan(opts: CodeOptions, tree: Tree) -> list[infill.Region]:
    """The stub bodies the task asks for. With files named (arguments or @mentions): in those
    files. With none: only in the files that define a function the task names, found by
    `git grep` (no other file is read or parsed)."""
    if opts.infill is False:
        return []
    rels = named_files(opts.task, opts.paths, tree)
    if not rels:
        pattern = infill.definition_pattern(opts.task)
        rels = tree.grep(pattern, ["*.py"]) if pattern else []
    return infill.plan(source_files(rels, tree), opts.task, opts.infill)


def infill_window(ckpt: Checkpoint) -> int:
    """Positions one infill canvas may span: the model's context, at most infill.CONTEXT_CAP."""
    return min(ckpt.context_length, infill.CONTEXT_CAP)


def region_canvas(tokenizer: Tokenizer, text: str, region: infill.Region, gen_length: int,
                  window: int) -> tuple[str, str, list[int], list[int]]:
    """(prefix, suffix, ids before the masks, ids after them) of `region` in `text`."""
    prefix, _, suffix = infill.split(text, region.start, region.end)
    try:
        pre, suf = infill.canvas(tokenizer.encode(prefix), tokenizer.encode(suffix), gen_length, window,
                                 tokenizer.eos_token_id)
    except ValueError:
        raise UsageError(f"--gen-length {gen_length} leaves no room for the file around it in the "
                         f"model's {window}-token context; lower --gen-length") from None
    return prefix, suffix, pre, suf


def fill_regions(ui: Ui, backend: Backend, ckpt: Checkpoint, tokenizer: Tokenizer, tree: Tree,
                 regions: list[infill.Region], opts: CodeOptions, window_text: bool = False) -> None:
    """Fill each region (bottom-up per file, so line numbers above stay valid), then review one
    patch of all the rewritten files. `window_text`: send only the text of the canvas's window
    (a remote model that dllm measures with another tokenizer), not the whole file around it."""
    window, cfg = infill_window(ckpt), opts.cfg
    texts: dict[str, str] = {}
    gens: list[Generation] = []
    for r in sorted(regions, key=lambda r: (r.path, -r.start)):
        text = texts.get(r.path, r.text)
        prefix, suffix, pre, suf = region_canvas(tokenizer, text, r, cfg.gen_length, window)
        if window_text:
            eos = tokenizer.eos_token_id
            prefix = tokenizer.decode(pre[1:] if pre[:1] == [eos] else pre)
            suffix = tokenizer.decode(suf[:-1] if suf[-1:] == [eos] else suf)
        ui.say(f"dllm: filling {r.what} in {r.path} (lines {r.start + 1}-{r.end}; "
               f"{len(pre) + len(suf)} tokens of context)")
        gen = generate_live(ui, backend, Request(tuple(pre), tuple(suf), prefix=prefix, suffix=suffix), cfg)
        if not gen.text.strip():
            raise PatchError(f"{r.path}: the model wrote nothing for {r.what}; raise --gen-length, "
                             "or try --no-infill")
        texts[r.path] = infill.with_body(text, r, gen.text)
        gens.append(gen)
    gen = Generation.combined(gens, "".join(g.text for g in reversed(gens)))
    for path, text in texts.items():
        problem = infill.syntax_problem(path, text)
        if problem:
            ui.say(f"dllm: warning: {path} would not compile with this body ({problem}); "
                   "read the diff before applying", style="yellow")
    edits = [Edit(path, None, text, "whole_file") for path, text in texts.items()]
    finish(ui, ckpt.name, gen, lambda outcome: review_edits(edits, tree.root, opts.review, ui, outcome),
           endpoint_of(backend))


def show_infill_context(ui: Ui, ckpt: Checkpoint, tokenizer: Tokenizer, tree: Tree,
                        regions: list[infill.Region], cfg: SamplerConfig) -> None:
    """--show-context in infill mode: each region and the tokens of file around it (the tokenizer
    alone; counted on the files as they are, before any region is filled)."""
    window = infill_window(ckpt)
    rows = []
    for r in regions:
        _, _, pre, suf = region_canvas(tokenizer, r.text, r, cfg.gen_length, window)
        rows.append(RegionRow(r.path, r.name, (r.start + 1, r.end), len(pre), len(suf)))
    report = InfillContextReport(str(tree.root), cfg.gen_length, window, tuple(rows))
    if ui.json:
        ui.write_json(report.as_dict())
        return
    from .render import render_infill_context

    render_infill_context(ui.out, [r.as_dict() for r in rows], cfg.gen_length, window)
