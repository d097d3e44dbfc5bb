"""Attention for training on CPU: two batched matmuls and a softmax, keeping only the probabilities.

Why not torch's SDPA there: its CPU flash kernel is slow at the shapes RL training feeds it
(64-wide heads, a padding mask, a few hundred keys). In a profile of bf16 forward+backward over
32 GSM8K-length rows of the bundled model, SDPA's forward and backward took 4.7 s of 21 s; the
same attention as batched GEMMs took 1.6 s (README, "Speed"). transformers' own "eager" attention
is as fast, but autograd keeps five (Q, K)-sized tensors of each layer for backward (scores,
masked scores, fp32 softmax, its cast, the dropout output). This one computes what eager does
(softmax in fp32, products in the autocast dtype) and keeps only the probabilities, in the
products' dtype. Its backward is the textbook one,

    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),   dQ = dS K,   dK = dS^T Q

with rowsum(dP * P) = rowsum(dO * O), as in FlashAttention (Dao et al. 2022, App. B.2), so the
backward reads P once. Queries come in scaled by 1/sqrt(d), which is cheaper than scaling the
(Q, K) scores. Grouped-query heads share their key/value head by stacking queries, not by copying
keys and values per head.

The kept probabilities grow with rows x heads x queries x keys, which long completions cannot
afford: `attention_forward`, registered with transformers as NAME, falls back to SDPA whenever
they would pass the budget (`model.attention_gib`) over all layers, and always on an accelerator,
where SDPA's fused kernels are the fast ones.
"""

from __future__ import annotations

import torch

NAME = "grpo_matmul"  # the attn_implementation models are loaded with
DEFAULT_GIB = 1.0
_budget_bytes = int(DEFAULT_GIB * 2**30)  # this process's budget, set by implementation()


class _MatmulAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask):
        # q (B, Hkv, R*Q, D) scaled, each key/value head's R query heads stacked; k, v (B, Hkv, K, D);
        # mask (B or 1, 1, 1, Q, K) bool, True where a query may attend, or None.
        B, Hkv, RQ, _ = q.shape
        K = k.shape[2]
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, Hkv, R*Q, K)
        if mask is not None:
            Q = mask.shape[-2]
            scores.view(B, Hkv, RQ // Q, Q, K).masked_fill_(~mask, torch.finfo(scores.dtype).min)
        wide = torch.promote_types(q.dtype, torch.float32)  # the softmax's precision: at least fp32
        probs = torch.softmax(scores, dim=-1, dtype=wide).to(q.dtype)  # (B, Hkv, R*Q, K)
        out = torch.matmul(probs, v)  # (B, Hkv, R*Q, D)
        ctx.save_for_backward(q, k, v, probs, out)
        return out

    @staticmethod
    def backward(ctx, d_out):  # d_out (B, Hkv, R*Q, D)
        q, k, v, probs, out = ctx.saved_tensors
        d_out = d_out.to(q.dtype)
        d_v = torch.matmul(probs.transpose(-1, -2), d_out)  # (B, Hkv, K, D)
        d_probs = torch.matmul(d_out, v.transpose(-1, -2))  # (B, Hkv, R*Q, K)
        wide = torch.promote_types(q.dtype, torch.float32)
        delta = (d_out.to(wide) * out.to(wide)).sum(-1, keepdim=True)  # (B, Hkv, R*Q, 1) = rowsum(dP * P)
        d_scores = d_probs.to(wide).sub_(delta).mul_(probs).to(q.dtype)
        return torch.matmul(d_scores, k), torch.matmul(d_scores.transpose(-1, -2), q), d_v, None


def matmul_attention(query, key, value, mask, scale: float) -> torch.Tensor:
    """softmax(scale * Q K^T, masked) V with grouped-query heads, keeping only the probabilities.

    query (B, H, Q, D); key, value (B, Hkv, K, D), H a multiple of Hkv; mask (B or 1, 1, Q, K) bool
    (True: attend) or None. Returns (B, H, Q, D) in the autocast dtype if autocast is on (as SDPA
    would; RoPE leaves queries and keys in fp32 under autocast), else in the query's."""
    B, H, Q, D = query.shape
    Hkv = key.shape[1]
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    with torch.autocast(device, enabled=False):
        # Head h uses key/value head h // R, as transformers' repeat_kv.
        q = (query.to(dtype) * scale).reshape(B, Hkv, (H // Hkv) * Q, D)
        m = None if mask is None else mask.unsqueeze(2)  # (B or 1, 1, 1, Q, K)
        out = _MatmulAttention.apply(q, key.to(dtype), value.to(dtype), m)
    return out.view(B, H, Q, D)


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """(1, 1, Q, K) bool: the last Q of K positions, each attending to itself and those before."""
    queries = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return (torch.arange(k_len, device=device)[None] <= queries)[None, None]


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers' attention-function signature (AttentionInterface): query (B, H, Q, D), key and
    value (B, Hkv, K, D) -> ((B, Q, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, Q, D = query.shape
    entries = B * H * Q * key.shape[2]
    config = getattr(module, "config", None)  # an attention module without one: count one layer
    layers = getattr(config, "num_hidden_layers", 1) if torch.is_grad_enabled() else 0
    # All layers' kept probabilities (2 or 4 bytes) plus one layer's fp32 softmax and scores.
    need = entries * (2 * layers + 6) if torch.is_autocast_enabled(query.device.type) else entries * (4 * layers + 8)
    unsupported = dropout > 0 or any(kwargs.get(k) is not None for k in ("s_aux", "softcap", "position_bias", "cache"))
    if (query.device.type != "cpu" or unsupported or need > _budget_bytes
            or (attention_mask is not None and attention_mask.dtype != torch.bool)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and Q > 1:  # transformers skips the mask when causal suffices
        attention_mask = causal_mask(Q, key.shape[2], query.device)
    out = matmul_attention(query, key, value, attention_mask, D ** -0.5 if scaling is None else scaling)
    return out.transpose(1, 2).contiguous(), None


def implementation(budget_gib: float = DEFAULT_GIB) -> str:
    """The attn_implementation to load a model with: NAME (registered with transformers, with SDPA's
    boolean masks) under a budget of `budget_gib`, or "sdpa" when it is 0."""
    global _budget_bytes
    if budget_gib <= 0:
        return "sdpa"
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    _budget_bytes = int(budget_gib * 2**30)
    return NAME
