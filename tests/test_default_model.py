"""The embedded default model in weights/: what ships, that it loads through the engine like any
checkpoint, that its card agrees with its measured figures, and that the README's main command
runs on it from a fresh checkout (no download)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from dllm_cli.catalog import DEFAULT_MODEL_NAME, default_model_dir
from dllm_cli.engine.loader import load_model

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "weights" / DEFAULT_MODEL_NAME
CARD = FOLDER / "README.md"


def test_the_folder_is_complete_and_small(monkeypatch):
    monkeypatch.delenv("DLLM_WEIGHTS_DIR", raising=False)
    assert default_model_dir() == FOLDER
    names = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md", "DATA.md", "data_manifest.json", "eval.json",
            "train_log.jsonl"} <= names
    total = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert total <= 64 * 2**20, f"{total / 2**20:.1f} MiB: the issue allows 64 MB"
    assert not list(FOLDER.glob("*.bin")) and not list(FOLDER.glob("*.py"))  # no pickle, no code
    from dllm_cli.catalog import Candidate, describe
    row = describe(Candidate("default", FOLDER, default=True), FOLDER)
    config = json.loads((FOLDER / "config.json").read_text())
    assert (row.family, row.licence, row.context, row.chosen) == ("dllm", "apache-2.0",
                                                                  config["max_position_embeddings"], True)
    assert row.params == load_model("default").spec.n_params  # from the safetensors headers alone


def test_it_loads_through_the_engine_like_any_checkpoint(monkeypatch):
    monkeypatch.delenv("DLLM_WEIGHTS_DIR", raising=False)
    model = load_model("default", device="cpu", dtype=torch.float32)
    assert model.spec.layout == "dream" and model.spec.shifted and model.spec.family == "dllm"
    tok = model.tokenizer
    assert (model.tokens.mask, model.tokens.eos) == (tok.token_to_id("<|mask|>"), tok.token_to_id("<|endoftext|>"))
    assert tok.pad_token_id != model.tokens.mask
    text = "def mean(values):\n    return sum(values) / len(values)\n"
    assert tok.decode(tok.encode(text)) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logits = model.logits(ids)
    assert logits.shape == (1, ids.shape[1], model.spec.vocab_size) and torch.isfinite(logits).all()


def _percent(figure: float) -> str:
    return f"{100 * figure:.1f}%"


def test_the_card_states_the_measured_figures(monkeypatch):
    monkeypatch.delenv("DLLM_WEIGHTS_DIR", raising=False)
    """The card's evaluation table quotes eval.json (written by the eval command it names)."""
    card = CARD.read_text()
    figures = json.loads((FOLDER / "eval.json").read_text())
    assert figures["command"] in card
    for key in ("masked_top1_15", "ngram_top1_15", "infill_exact", "body_compiles", "chat_body_compiles"):
        assert _percent(figures[key]) in card, f"{key} = {_percent(figures[key])} is not in the card"
    assert f"{figures['masked_bits_per_char']:.2f}" in card
    spec = load_model("default").spec
    assert f"{spec.n_params:,}" in card
    state = json.loads((FOLDER / "training_state.json").read_text())
    assert f"{state['step']:,}" in card or str(state["step"]) in card
    for heading in ("## Model", "## Training data", "## Training", "## Evaluation", "## Limitations",
                    "## Using a real 7B model instead"):
        assert heading in card


def _readme_main_command() -> list[str]:
    """The `dllm code ...` part of the README's first set-up command."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1)
    command = block.split("&&")[-1].strip()
    assert command.startswith("dllm code"), command
    return shlex.split(command)


def test_the_readme_main_command_runs_on_the_default_model(tmp_path):
    """In a fresh git repository holding the example file: exit 0, a diff on stdout that touches
    only the stub's body, the file unchanged (--dry-run)."""
    args = _readme_main_command()
    example = next(a for a in args if a.endswith(".py"))
    (tmp_path / example).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / example, tmp_path / example)
    for git in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *git], cwd=tmp_path, check=True, capture_output=True)
    before = (tmp_path / example).read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    for name in ("DLLM_MODEL", "DLLM_WEIGHTS_DIR", "DLLM_HOME"):
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no user config
    done = subprocess.run([sys.executable, "-m", "dllm_cli", *args[1:]], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"\n--- a/{example}\n+++ b/{example}\n@@ " in done.stdout, done.stdout
    removed = [line for line in done.stdout.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert removed == ["-    ..."]  # only the stub's body is replaced
    assert (tmp_path / example).read_bytes() == before
    assert "\x1b[" not in done.stdout
