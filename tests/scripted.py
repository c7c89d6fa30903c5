"""A scripted mock model: a `Denoiser` (engine/model.py's contract) that writes given answers, so
the real pipeline (sampler, decode, edits, review, apply) runs end to end without weights.

For generation number g (a new one starts at a full-canvas call whose length or prompt differs
from the current one's, or that has more masks than the call before) it is sure of
`answers[g]`'s tokens at the canvas positions after the prompt, then eos; elsewhere it repeats
the token it sees. It records what each generation was given (`seen`: prompt ids, suffix ids),
so a test can check what the model would have seen.
"""

from __future__ import annotations

import torch

SURE = 20.0  # logit margin: softmax confidence ~1, so threshold decoding commits a block at once


class ScriptedModel:
    def __init__(self, tokenizer, answers, interrupt_after: int | None = None):
        self.tokenizer, self.checkpoint = tokenizer, None
        self.tokens = tokenizer.special_tokens()
        self.scripts = [tokenizer.encode(a) for a in answers]
        self.vocab = tokenizer.vocab_size
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.seen: list[tuple[list[int], list[int]]] = []
        self.calls, self.interrupt_after = 0, interrupt_after
        self._start = self._masks = self._canvas = self._prompt = None

    def new_cache(self):
        return {}

    def parameters(self):
        return iter(())

    def logits(self, ids, attention_mask=None, cache=None, window=None):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        row = ids[0].tolist()
        masks = row.count(self.tokens.mask)
        if window is None and (self._prompt is None or masks > self._masks or len(row) != self._length
                               or row[:self._start] != self._prompt):  # a new generation
            start = row.index(self.tokens.mask)
            self.seen.append((row[:start], row[start + masks:]))
            self._start, self._canvas, self._prompt, self._length = start, masks, row[:start], len(row)
        self._masks = masks
        script = self.scripts[min(len(self.seen), len(self.scripts)) - 1]
        s, e = (0, ids.shape[1]) if window is None else window
        out = torch.zeros(ids.shape[0], e - s, self.vocab)
        for k, pos in enumerate(range(s, e)):
            j = pos - self._start
            if 0 <= j < self._canvas:
                target = script[j] if j < len(script) else self.tokens.eos
            else:
                target = row[pos]
            out[:, k, target] = SURE
        return out
