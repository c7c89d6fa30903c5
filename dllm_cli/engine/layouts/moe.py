"""Mixture-of-experts parts the MoE layouts share (llada2_moe.py, sdar_moe.py): the shape
(`MoESpec`: experts, top-k, which layers are sparse, the router rule, partial rotary), the two
routers and the dispatch of tokens to their experts.

Routers (both return, per token, the chosen experts and their weights):
  * `softmax_topk` (Qwen3-MoE, SDAR-MoE): p = softmax(x W^T) in fp32 over all experts, the top-k,
    renormalised over the k when `norm_topk_prob`, cast to the activations' dtype;
  * `grouped_sigmoid` (LLaDA2 / Bailing-MoE-V2, the DeepSeek-V3 rule): s = sigmoid(x W^T) in fp32;
    the expert bias is added for the *choice* only: the experts are split into `n_group` groups,
    each group scored by the sum of its two best biased scores, the `topk_group` best groups kept,
    and the top-k biased scores chosen among their experts; the weights are the unbiased s of the
    chosen experts, divided by their sum (+1e-20) when k > 1, times `routed_scaling_factor`.
Experts are ordinary `nn.Linear` modules named as the checkpoints name them
(`mlp.experts.N.{gate,up,down}_proj`, `mlp.shared_experts.*`), so weight-only quantisation of
`nn.Linear` reaches them; the router (`mlp.gate.weight`, + `expert_bias`) is deliberately not an
`nn.Linear`: it stays in the checkpoint's precision and is computed as the source computes it.
The dispatch sorts the (token, expert) pairs by expert and runs each chosen expert once on its
tokens; it needs the per-expert counts on the host, the one host sync of a MoE layer (every
eager MoE implementation has it: transformers' `nonzero`, the HF remote code's `.cpu()`), and it
accumulates Σ w·expert(x) in fp32 (as LLaDA2's `moe_infer`), cast back once.
Must not: read files, sample, or know tensor names beyond the module attributes above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import ModelSpec, SwiGLU

ROUTERS = ("softmax", "grouped-sigmoid")


@dataclass(frozen=True)
class MoESpec(ModelSpec):
    """A ModelSpec with experts. `intermediate_size` is the dense layers' MLP width."""

    num_experts: int = 0
    experts_per_token: int = 0  # k
    moe_intermediate_size: int = 0
    shared_intermediate_size: int = 0  # 0: no shared expert
    sparse_layers: tuple[bool, ...] = ()  # per layer: routed experts (True) or the dense MLP
    router: str = "softmax"  # one of ROUTERS
    norm_topk_prob: bool = True  # softmax router: renormalise the top-k weights
    n_group: int = 1  # grouped-sigmoid router
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    expert_bias: bool = False  # mlp.gate.expert_bias (grouped-sigmoid: used for the choice only)
    rotary_dim: int | None = None  # partial rotary: the first rotary_dim dims of a head (None: all)
    fused_qkv: bool = False  # one query_key_value projection (LLaDA2's names)

    @property
    def rope_dim(self) -> int:
        return self.rotary_dim or self.head_dim

    def _attention_params(self) -> int:
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        n = 2 * q * h + 2 * kv * h + (q + 2 * kv if self.qkv_bias else 0)
        return n + (2 * self.head_dim if self.qk_norm else 0)

    def _mlp_params(self, sparse: bool, experts: int) -> int:
        h = self.hidden_size
        if not sparse:
            return 3 * h * self.intermediate_size
        router = self.num_experts * h + (self.num_experts if self.expert_bias else 0)
        return router + experts * 3 * h * self.moe_intermediate_size + 3 * h * self.shared_intermediate_size

    def _count(self, active: bool) -> int:
        h = self.hidden_size
        layers = sum(self._attention_params() + 2 * h
                     + self._mlp_params(s, self.experts_per_token if active else self.num_experts)
                     for s in self.sparse_layers)
        head = 0 if self.tied else self.vocab_size * h
        return self.vocab_size * h + layers + h + head

    def param_count(self) -> int:
        """Every parameter (all experts): what loading allocates."""
        return self._count(active=False)

    def active_param_count(self) -> int:
        """The parameters one token reads: the k routed experts it chose (plus the shared expert,
        the router, attention, norms, embedding row aside, the head)."""
        return self._count(active=True)


class Router(nn.Module):
    """`mlp.gate`: `weight` (E, hidden) and, when the spec says so, `expert_bias` (E,), kept in
    fp32 by the loader (the source keeps it as an fp32 buffer)."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spec.num_experts, spec.hidden_size))
        if spec.expert_bias:
            self.expert_bias = nn.Parameter(torch.zeros(spec.num_experts), requires_grad=False)

    def forward(self, x: torch.Tensor, spec: MoESpec) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, hidden) -> (chosen experts (T, k) long, their weights (T, k) fp32)."""
        if spec.router == "grouped-sigmoid":
            logits = F.linear(x.float(), self.weight.float())
            bias = self.expert_bias if spec.expert_bias else None
            return grouped_sigmoid(logits, bias, spec)
        return softmax_topk(F.linear(x, self.weight), spec)


def softmax_topk(logits: torch.Tensor, spec: MoESpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE: softmax over the experts in fp32, the top-k, renormalised when norm_topk_prob,
    cast to the logits' dtype (then used in fp32 by the dispatch)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, chosen = torch.topk(probs, spec.experts_per_token, dim=-1)
    if spec.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return chosen, weights.to(logits.dtype).float()


def grouped_sigmoid(logits: torch.Tensor, bias: torch.Tensor | None,
                    spec: MoESpec) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2's gate (fp32 logits): sigmoid scores; the bias only for choosing; group-limited
    top-k; weights = the unbiased scores, normalised when k > 1, times routed_scaling_factor."""
    scores = torch.sigmoid(logits)
    choice = scores if bias is None else scores + bias.float()
    T, E = choice.shape
    group = choice.view(T, spec.n_group, E // spec.n_group).topk(2, dim=-1).values.sum(dim=-1)
    kept = torch.topk(group, spec.topk_group, dim=-1, sorted=False).indices
    group_mask = torch.zeros_like(group).scatter_(1, kept, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand(T, spec.n_group, E // spec.n_group).reshape(T, E)
    choice = choice.masked_fill(expert_mask == 0, float("-inf"))
    chosen = torch.topk(choice, spec.experts_per_token, dim=-1).indices
    weights = scores.gather(1, chosen)
    if spec.experts_per_token > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return chosen, weights * spec.routed_scaling_factor


def dispatch(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, experts: nn.ModuleList) -> torch.Tensor:
    """Σ_k weights[t, k] · experts[chosen[t, k]](x[t]) for x (T, hidden): each chosen expert runs
    once on the tokens that chose it; accumulated in fp32, returned in x's dtype."""
    T, k = chosen.shape
    flat = chosen.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=len(experts)).tolist()  # the MoE layer's one host sync
    rows = order // k  # the token of each sorted (token, expert) pair
    xs = x.index_select(0, rows)
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n:
            ys[start:start + n] = experts[e](xs[start:start + n])
            start += n
    w = weights.reshape(-1).index_select(0, order).float()
    out = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, rows, ys.float() * w[:, None])
    return out.to(x.dtype)


class SparseMoE(nn.Module):
    """A sparse `mlp`: `gate` (the router), `experts` (ModuleList of SwiGLU) and, when the spec
    has one, `shared_experts` (a SwiGLU every token runs, added to the routed sum)."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        self.spec = spec
        self.gate = Router(spec)
        self.experts = nn.ModuleList(SwiGLU(spec.hidden_size, spec.moe_intermediate_size)
                                     for _ in range(spec.num_experts))
        if spec.shared_intermediate_size:
            self.shared_experts = SwiGLU(spec.hidden_size, spec.shared_intermediate_size)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., hidden) -> (chosen (T, k), weights (T, k)) over its flattened tokens."""
        return self.gate(x.reshape(-1, x.shape[-1]), self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        chosen, weights = self.gate(flat, self.spec)
        y = dispatch(flat, chosen, weights, self.experts).view_as(x)
        if self.spec.shared_intermediate_size:
            y = y + self.shared_experts(x)
        return y
