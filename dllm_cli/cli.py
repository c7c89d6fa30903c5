"""The `dllm` command: Typer commands that turn options into values and call the pipeline, and
the one edge that catches errors (in `main`): a `DllmError` becomes its one line and exit code,
anything else one line and exit 1 (DLLM_DEBUG=1 re-raises it, traceback included).

Knows: options, their defaults and help, which stream gets what (people: stderr; data: stdout),
exit codes, that SIGTERM and SIGHUP end a command like Ctrl-C does (exit 143 / 129 instead of
130), and that every command that touches the work tree (`code`, `apply`, `undo`) first lets
journal.recover finish an apply or undo a killed dllm left half done. The `dllm code` pipeline
is pipeline.py; review and apply are review.py; the user's choices are settings.py. Must not
import torch (or the engine) at import time: `dllm --help` and `dllm --version` stay instant;
nothing imports this module.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, List, NoReturn, Optional

import typer
from typing_extensions import Annotated

from . import __version__
from .errors import DllmError, UsageError
from .settings import Settings
from .ui import Ui

EXAMPLES = """Examples:

\b
  dllm code "add a function that returns the mean of a list"
  dllm code "fix the off-by-one in @src/pager.py"   # @path: send that file first
  dllm code "implement median" src/stats.py         # a stub's body: anchored infilling
  dllm code --show-context "make the pager faster"  # what would be sent; loads no model
  pytest -x 2>&1 | dllm code --dry-run "make this test pass" tests/test_pager.py > fix.diff
  dllm apply fix.diff                               # review the diff, then apply it
  dllm undo                                         # restore the files, byte for byte
  dllm serve                                        # keep the model warm; dllm code then uses it
  dllm code --endpoint mercury "add a --verbose flag"   # a remote dLLM ($INCEPTION_API_KEY)
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
QuantOpt = Annotated[Optional[str], typer.Option(
    "--quant", help="Weights: none, or int8 (weight-only int8 linears: about half the memory of bfloat16; "
    "docs/performance.md).", show_default="none, or the user config's quant")]


@app.command(epilog=EXAMPLES)
def code(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The instruction; '-' reads it from stdin.")],
    paths: Annotated[Optional[List[str]], typer.Argument(metavar="PATHS",
        help="Files or directories to send first (besides @path mentions in the prompt).",
        show_default=False)] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
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
    editing_threshold: Annotated[Optional[str], typer.Option("--editing-threshold", metavar="P|off",
                                 help="LLaDA2 checkpoints: token editing (LLaDA2.1) replaces a written token "
                                 "of the current block when the model prefers another with probability "
                                 "above P (0: on any disagreement); off: LLaDA2.0's decoding.",
                                 show_default="LLaDA2.1: 0.5; LLaDA2.0: off")] = None,
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
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", help="An OpenAI-compatible server instead of a "
                        "local model: its base URL (http://127.0.0.1:8000/v1) or a preset: mercury, sglang, vllm, "
                        "dllm (PRESET=URL for one elsewhere). Default: $DLLM_ENDPOINT, then the user config. "
                        "--model names the served model (found from the server when not given).",
                        show_default=False)] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", metavar="NAME", help="The environment "
                           "variable that holds the endpoint's API key (the key itself is never printed).",
                           show_default="DLLM_API_KEY; mercury: INCEPTION_API_KEY")] = None,
    no_server: Annotated[bool, typer.Option("--no-server", help="Load the model here even when a `dllm serve` "
                         "of it is running (and ignore $DLLM_ENDPOINT / the config's endpoint).")] = False,
) -> None:
    """Ask the model for a change; review the diff; apply it (undo with `dllm undo`)."""
    from .catalog import model_name
    from .config import SamplerConfig, parse_editing_threshold
    from .pipeline import CodeOptions
    from .pipeline import code as run_code
    from .review import ReviewOptions

    ui = Ui.detect(json_out=json_out, no_live=no_live)
    recover_tree(ui)
    settings = Settings.load()
    options: dict[str, Any] = dict(gen_length=gen_length, steps=steps, block_length=block_length,
                                   temperature=temperature, threshold=threshold, seed=seed,
                                   alg=alg)  # applied over the checkpoint family's recipe (pipeline)
    cfg = SamplerConfig.from_options(**options)
    if editing_threshold is not None:  # checked now, applied over a LLaDA2 recipe (others refuse it)
        parse_editing_threshold(editing_threshold)
        options["editing_threshold"] = editing_threshold
    if endpoint and no_server:
        raise UsageError("--endpoint and --no-server contradict each other; drop one")
    task, stdin_text, notes = read_task(prompt)
    remote = settings.endpoint_choice(endpoint, no_server)
    model_path = model if remote else settings.model_choice(model)[0]  # with an endpoint: the served name
    review = ReviewOptions(yes=yes, dry_run=dry_run, commit_message=task if commit else None,
                           model_name=model_name(model_path))
    run_code(CodeOptions(task=task, paths=tuple(paths or ()), stdin_text=stdin_text, notes=tuple(notes),
                         model=model_path, device=settings.device_choice(device),
                         dtype=settings.dtype_choice(dtype), quant=settings.quant_choice(quant), cfg=cfg, infill=infill,
                         show_context=show_context, review=review, endpoint=remote,
                         api_key_env=api_key_env or settings.api_key_env, no_server=no_server,
                         timeout=settings.timeout_choice(), home=settings.home, sampler_options=options), ui)


def read_task(prompt: str) -> tuple[str, str | None, list[str]]:
    """(task, piped stdin text or None, notes). '-' takes the task itself from stdin."""
    from .ui import read_stdin

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


# ---- dllm apply / undo ------------------------------------------------------------------------

@app.command("apply")
def apply_command(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="A unified diff file, or '-' for stdin.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check it and print the diff dllm would apply.")] = False,
) -> None:
    """Apply a unified diff, checked as strictly as `git apply --check` (exact context, hunk counts
    matching their headers; no renames, copies or binary diffs; mode changes ignored), then the
    same review, atomic write and undo journal."""
    from .review import ReviewOptions, review_diff

    ui = Ui.detect()
    root = recover_tree(ui)
    text = _read_diff(source)
    review_diff(text, "stdin" if source == "-" else source, root,
                ReviewOptions(yes=yes, dry_run=dry_run, save=False), ui)


MAX_DIFF_BYTES = 64 * 1024 * 1024  # a diff for `dllm apply` beyond this is refused


def _read_diff(source: str) -> str:
    """The diff's text, its bytes as they are (CR kept: no newline translation), at most MAX_DIFF_BYTES.
    A pipe or process substitution (`dllm apply <(git diff)`) is read like a file."""
    from .ui import isatty

    try:
        if source == "-":
            if isatty(sys.stdin):
                raise UsageError("FILE is '-' but stdin is a terminal; pipe a diff: git diff | dllm apply -")
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read(MAX_DIFF_BYTES + 1) if stream is not None else sys.stdin.read().encode("utf-8")
        else:
            with open(Path(source).expanduser(), "rb") as handle:
                data = handle.read(MAX_DIFF_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{source}: cannot read the diff ({exc.strerror or exc})") from None
    if len(data) > MAX_DIFF_BYTES:
        raise UsageError(f"{source}: the diff is over {MAX_DIFF_BYTES // (1024 * 1024)} MiB; split it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: the diff is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def recover_tree(ui: Ui) -> Path:
    """The work tree root, after finishing an apply or undo a killed dllm left (said on stderr)."""
    from .journal import recover, state_dir_for
    from .repo import work_root

    root = work_root()
    found = recover(root, state_dir_for(root))
    if found is not None:
        ui.say(f"dllm: {found.message()}", style="yellow")
    return root


@app.command()
def undo() -> None:
    """Restore the files of the last applied patch, byte for byte (refused if they changed since);
    a patch committed with --commit is reverted by a new commit."""
    from .review import undo_last

    ui = Ui.detect()
    undo_last(recover_tree(ui), ui)


# ---- dllm models --------------------------------------------------------------------------------

@app.command()
def models(
    paths: Annotated[Optional[List[Path]], typer.Argument(metavar="PATHS", help="More checkpoint folders to describe.",
                                                          show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list on stdout.")] = False,
) -> None:
    """List local checkpoints: the embedded default, $DLLM_MODEL, the user config, the folders in
    <config dir>/models, and PATHS (family, size, dtype, licence; reads no weights)."""
    from . import catalog, footprint

    ui = Ui.detect(json_out=json_out)
    settings = Settings.load()
    chosen_path, _ = settings.model_choice(None)
    try:
        chosen: Path | None = catalog.resolve(chosen_path)
    except DllmError:
        chosen = catalog.default_model_dir() if chosen_path is None else Path(chosen_path).expanduser()
    candidates = catalog.model_candidates(settings.models_dir, [("$DLLM_MODEL", settings.env_model or ""),
                                                                ("config", settings.model or "")], paths or [])
    free = footprint.available_ram()
    rows = [catalog.describe(c, chosen, free) for c in candidates]
    if json_out:
        ui.write_json([r.as_dict() for r in rows])
        return
    from .render import render_models

    render_models(ui.out, rows)
    ui.say("* = the model `dllm code` uses now (--model > $DLLM_MODEL > user config > default)")
    ui.say("bf16 / int8: the weights' memory in bfloat16 and with --quant int8; fits: in bf16, only in int8, or "
           f"no, against {'-' if free is None else f'{free / 2 ** 30:.1f} GiB'} free RAM "
           "(DLLM_MEMORY_LIMIT=<bytes> to judge a GPU's memory)")


# ---- dllm bench ---------------------------------------------------------------------------------

@app.command()
def bench(
    model: ModelOpt = None,
    shape: Annotated[Optional[str], typer.Option(help="Random weights of a published shape on the "
                     "device instead of a checkpoint: dream-7b, llada-8b, open-dcoder-0.5b, sdar-8b, sdar-1.7b, "
                     "stable-diffcoder-8b, fast-dllm-v2-7b, llada2-mini, sdar-30b-a3b.", show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option(help="With --shape: this many layers instead of the "
                      "published depth (widths and vocabulary unchanged), e.g. to fit a CPU.",
                      show_default=False)] = None,
    prompt_tokens: Annotated[int, typer.Option(help="With --shape: tokens in each random prompt.")] = 64,
    prompts: Annotated[Optional[int], typer.Option("--prompts", help="How many prompts to time (the first N "
                       "coding tasks; with --shape, N random prompts).", show_default="4")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
    gen_length: Annotated[int, typer.Option(help="Tokens generated per run.")] = 128,
    k: Annotated[Optional[List[int]], typer.Option("--k", help="Also time a fixed k tokens committed "
                 "per forward (repeatable: --k 1 --k 2).", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Time the reference loop against the default fast mode in one process; report the ratios
    (block-diffusion models: full recompute against the exact block KV cache and their recipe)."""
    from .bench import format_report, run_bench

    ui = Ui.detect(json_out=json_out)
    settings = Settings.load()
    if shape is not None and model is not None:
        raise UsageError("use either --model or --shape, not both")
    model_path = None if shape else settings.model_choice(model)[0]
    report = run_bench(model_path, shape=shape, device=settings.device_choice(device),
                       dtype=settings.dtype_choice(dtype), gen_length=gen_length, ks=tuple(k or ()),
                       layers=layers, prompt_tokens=prompt_tokens, n_prompts=prompts,
                       quant=settings.quant_choice(quant))
    if json_out:
        ui.write_json(report.as_dict())
    else:
        ui.data(format_report(report))


# ---- dllm serve ---------------------------------------------------------------------------------

@app.command()
def serve(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs --api-key.")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one; printed and in the discovery file).")] = 8765,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="DLLM_API_KEY", show_envvar=True,
                       help="Require this key (Authorization: Bearer KEY). Prefer $DLLM_API_KEY: a key on "
                       "the command line is visible to other users.", show_default=False)] = None,
    queue: Annotated[int, typer.Option(help="Requests that may wait behind the running one; more get 503.")] = 32,
    status: Annotated[bool, typer.Option("--status", help="List the dllm servers running on this machine "
                                         "and exit.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="With --status: a JSON list on stdout.")] = False,
) -> None:
    """Keep a model warm and serve OpenAI-compatible HTTP (docs/serve.md); `dllm code` uses it."""
    ui = Ui.detect(json_out=json_out)
    settings = Settings.load()
    if status:
        from .serve.runner import status as running

        servers = running(settings.home)
        if json_out:
            ui.write_json([s.as_dict() for s in servers])
            return
        from .render import render_servers

        render_servers(ui.out, servers)
        return
    from .serve.runner import ServeOptions, check_key
    from .serve.runner import serve as run_server

    model_path, _ = settings.model_choice(model)
    run_server(ServeOptions(model=model_path, device=settings.device_choice(device),
                            dtype=settings.dtype_choice(dtype), quant=settings.quant_choice(quant), host=host,
                            port=port, api_key=check_key(api_key), queue=queue), ui, settings.home)


# ---- the edge -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; turn DllmError into one line on stderr and its exit code."""
    # Before torch is imported: OpenMP threads that spin while idle made CPU denoising 26x slower
    # on a 2-core machine with other work running (13.3 s vs 0.5 s for 32 tokens). A value the
    # user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    previous = _end_on_signals()
    _STOPPED_BY.clear()
    try:
        _run(argv)
    except SystemExit as done:
        if argv is None and "torch" in sys.modules:
            _exit_now(done.code)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled like Ctrl-C (held while an apply writes, then rolled back)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOPPED_BY: list[int] = []  # the SIGTERM / SIGHUP that ended this command (typer turns it into Exit(130))


def _raise_terminated(signum: int, frame: object) -> None:
    _STOPPED_BY.append(signum)
    raise Terminated(signum)


def _interrupted() -> NoReturn:
    if _STOPPED_BY:
        signum = _STOPPED_BY.pop()
        _fail(f"stopped by {signal.Signals(signum).name}; nothing was changed", 128 + signum)
    _fail("interrupted; nothing was changed", 130)


def _end_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP raise Terminated (a KeyboardInterrupt) unless the process ignores them
    (nohup); returns the handlers to put back."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) is signal.SIG_IGN:
            continue
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, _raise_terminated)
    return previous


def _exit_now(code: object) -> NoReturn:
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
        _interrupted()
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as err:  # click's usage errors (exit 2); typer vendors click
        show = getattr(err, "show", None)
        if callable(show):
            show()
        sys.exit(getattr(err, "exit_code", 2))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except Exception as exc:  # not a DllmError: still one line (DLLM_DEBUG=1: the traceback)
        if os.environ.get("DLLM_DEBUG"):
            raise
        _fail(unexpected(exc), 1)
    if result == 130:
        _interrupted()
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


def _fail(message: str, code: int) -> NoReturn:
    line = " ".join(message.split())
    try:
        print(f"dllm: error: {line}" if code < 128 and code != 4 else f"dllm: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is gone (the terminal closed: SIGHUP)
    sys.exit(code)
