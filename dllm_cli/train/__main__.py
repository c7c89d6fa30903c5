"""`python -m dllm_cli.train <step>`: the recipe of the embedded model, one command per step.

    build-corpus     data/corpus/{train,heldout}.jsonl + manifest.json
    train-tokenizer  data/tokenizer/{tokenizer.json,tokenizer_config.json,chat_template.jinja}
    prepare          data/tokens/: packed token stream, SFT samples (needs the tokenizer)
    train            runs/<name>/: train_log.jsonl, checkpoint/ (a complete model folder)
    package          weights/dllm-coder-mini/: the checkpoint, DATA.md, data_manifest.json, train_log.jsonl
    eval             held-out masked top-1 at 15%, single-line infilling, compiling bodies

Knows: argument parsing and the default paths. Must not: hold training logic.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

# Shared CPUs: OpenMP threads that spin at barriers make a 2-core machine with other jobs
# 3x slower (11.8 s vs 3.8 s per step measured); passive waiting keeps both threads useful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dllm_cli.train")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("build-corpus", help="collect permissively licensed Python files")
    c.add_argument("--out", type=Path, default=Path("data/corpus"))
    c.add_argument("--heldout-percent", type=float, default=2.0)
    c.add_argument("--max-bytes-per-package", type=int, default=4_000_000)
    c.add_argument("--site", type=Path, action="append", default=None,
                   help="a site-packages folder to read (repeatable; default: this interpreter's)")
    t = sub.add_parser("train-tokenizer", help="byte-level BPE on the training files")
    t.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    t.add_argument("--out", type=Path, default=Path("data/tokenizer"))
    t.add_argument("--vocab-size", type=int, default=1024)
    t.add_argument("--every", type=int, default=3, help="train on every N-th file")
    d = sub.add_parser("prepare", help="tokenize the corpus and synthesise SFT samples")
    d.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    d.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer"))
    d.add_argument("--out", type=Path, default=Path("data/tokens"))
    d.add_argument("--seq-len", type=int, default=512)
    d.add_argument("--min-gen", type=int, default=128)
    d.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("train", help="masked-diffusion training")
    r.add_argument("--preset", default="cpu-mini")
    r.add_argument("--data", type=Path, default=Path("data/tokens"))
    r.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer"))
    r.add_argument("--run", type=Path, default=Path("runs/cpu-mini"))
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--max-steps", type=int, default=None, help="fixed length (disables the time budget)")
    r.add_argument("--time-budget", type=float, default=None, help="seconds; sets max_steps from speed")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    r.add_argument("--warmup-steps", type=int, default=None, help="default: the preset's")
    r.add_argument("--init", type=Path, default=None,
                   help="start from this checkpoint's weights (a second phase; fresh optimizer and schedule)")
    k = sub.add_parser("package", help="copy a trained checkpoint and its data record into weights/")
    k.add_argument("--checkpoint", type=Path, default=Path("runs/cpu-mini/checkpoint"))
    k.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    k.add_argument("--out", type=Path, default=Path("weights/dllm-coder-mini"))
    k.add_argument("--log", type=Path, action="append", default=None,
                   help="training log to ship (repeatable, in order: one per phase); "
                        "default: the checkpoint's run's train_log.jsonl")
    e = sub.add_parser("eval", help="evaluate a checkpoint folder")
    e.add_argument("--model", type=Path, default=Path("weights/dllm-coder-mini"))
    e.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    e.add_argument("--max-files", type=int, default=None)
    e.add_argument("--n-infill", type=int, default=200)
    e.add_argument("--n-bodies", type=int, default=100, help="stubbed functions for the infill measure")
    e.add_argument("--n-chat", type=int, default=30, help="stubbed functions asked for in the chat format")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = "python -m dllm_cli.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.cmd == "build-corpus":
        from dllm_cli.train.corpus import build_corpus
        m = build_corpus(args.out, site=args.site, heldout_percent=args.heldout_percent,
                         max_bytes_per_package=args.max_bytes_per_package)
        print(json.dumps(m.counts))
    elif args.cmd == "train-tokenizer":
        from dllm_cli.train.corpus import read_docs
        from dllm_cli.train.tokenizer_train import sample_texts, save_tokenizer, train_bpe
        docs = read_docs(args.corpus / "train.jsonl")
        save_tokenizer(train_bpe(sample_texts(docs, args.every), args.vocab_size), args.out)
        print(f"wrote {args.out}")
    elif args.cmd == "prepare":
        from dllm_cli.train.data import prepare
        print(json.dumps(prepare(args.corpus, args.tokenizer, args.out, args.seq_len, args.min_gen, args.seed)))
    elif args.cmd == "train":
        from dataclasses import replace

        from dllm_cli.train.train import PRESETS, train
        cfg = PRESETS[args.preset]
        if args.seed is not None:
            cfg = replace(cfg, seed=args.seed)
        if args.max_steps is not None:
            cfg = replace(cfg, max_steps=args.max_steps, time_budget_s=None)
        if args.time_budget is not None:
            cfg = replace(cfg, time_budget_s=args.time_budget)
        if args.threads is not None:
            cfg = replace(cfg, threads=args.threads)
        if args.init is not None:
            cfg = replace(cfg, init=str(args.init))
        if args.lr is not None:
            cfg = replace(cfg, lr=args.lr)
        if args.warmup_steps is not None:
            cfg = replace(cfg, warmup_steps=args.warmup_steps)
        print(train(cfg, args.data, args.tokenizer, args.run, command=command))
    elif args.cmd == "package":
        from dllm_cli.train.train import package
        print(package(args.checkpoint, args.corpus, args.out, args.log))
    elif args.cmd == "eval":
        from dllm_cli.train.evaluate import run_eval
        figures = run_eval(args.model, args.corpus, n_infill=args.n_infill, n_bodies=args.n_bodies,
                           n_chat=args.n_chat, seed=args.seed, max_files=args.max_files)
        figures["command"] = command
        text = json.dumps(figures, indent=1)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
