"""The recipe of the embedded model `weights/dllm-coder-mini`: corpus, tokenizer, samples, training, eval.

Run it with `python -m dllm_cli.train <step>` (see __main__.py and docs/training.md). Nothing in
the CLI imports this package; it must not be imported by `dllm` at start-up.
"""
