"""Per-token log-probabilities and entropies from logits, in bounded memory.

The policy-gradient ratio of DeepSeekMath GRPO (arXiv 2402.03300, eq. 3) needs only
log pi(o_t | q, o_<t) for the sampled token, so materialising a full (N, T, V) fp32
log_softmax (V ~ 150k) would cost far more memory than the answer. Both functions here walk
the (N, T) grid in chunks of at most ``chunk_size`` token positions; every chunk is a *view*
of the logits (no copy of the whole tensor), upcast to fp32 only for that chunk.

Chunk size is a speed choice, never a numerical one: each position's reductions run alone, so
every chunking gives the same bits (tested). On a CPU the chunk's fp32 scratch tensors fit in
its caches (about 4 MB each): 256-token chunks at V = 49k (50 MB each) made forward+backward of
one 8 x 128-token micro-batch's log-probs ~3x slower, since every scratch tensor was fresh
memory and every pass over it went to DRAM. On a GPU 256-token chunks keep the kernel count low.

Autograd goes through hand-written backward passes instead of recording the chunk graphs,
because recording would keep every chunk's fp32 upcast alive until backward, i.e. the full
(N, T, V) fp32 tensor after all. Backward recomputes each chunk's softmax from the saved
logits and the saved (N, T) logsumexp. Double backward is not supported.

With ``reuse_logits=True`` the log-probs' backward writes the logits' gradient into the logits'
own memory, chunk by chunk, instead of a second (N, T, V) tensor: each chunk is read before it
is overwritten and never read again, so the gradient has the same bits. That second tensor was
allocated while every activation of the forward was still held (8 x 128 tokens at V = 49k:
201 MB in fp32). Only for logits nothing else reads after the call; another autograd node that
saved them and runs after this backward fails loudly (torch's in-place check), it is not misled.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Token positions per chunk on an accelerator: at V = 152k ~155 MB of fp32 per scratch tensor (the
# entropy holds a few at once), still few kernels.
DEFAULT_CHUNK_TOKENS = 256
# Elements per chunk on a CPU (4 MB of fp32): V = 49k -> 21 positions, V = 152k -> 6. Measured on a
# 2-core AVX512 machine at both vocabularies, 2^19-2^21 elements were fastest, 2^23+ ~3x slower.
CPU_CHUNK_ELEMENTS = 2**20


def default_chunk_size(logits: torch.Tensor) -> int:
    """Token positions per chunk for these (N, T, V) logits: cache-sized on a CPU, else 256."""
    if logits.device.type == "cpu":
        return max(1, CPU_CHUNK_ELEMENTS // max(logits.shape[-1], 1))
    return DEFAULT_CHUNK_TOKENS


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp64 stays fp64 (gradient checks); bf16/fp16 lose too much in logsumexp, so use fp32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(n: int, t: int, chunk_tokens: int) -> Iterator[tuple[slice, slice]]:
    """Cover an (n, t) grid with (row, column) slices of at most ``chunk_tokens`` cells.

    Slicing rows, or columns within one row, keeps each chunk a view even when the logits are
    themselves a non-contiguous view, such as a slice of a larger logits tensor.
    """
    if t <= chunk_tokens:
        rows = max(1, chunk_tokens // t)
        for i in range(0, n, rows):
            yield slice(i, i + rows), slice(None)
    else:
        for i in range(n):
            for j in range(0, t, chunk_tokens):
                yield slice(i, i + 1), slice(j, j + chunk_tokens)


def _check_logits(logits: torch.Tensor, chunk_size: int | None, index: torch.Tensor | None = None,
                  temperature: float = 1.0) -> int:
    """The chunk size to use (`default_chunk_size` for None), after checking the arguments."""
    if logits.dim() != 3:
        raise ValueError(
            f"logits must be (N, T, V), got shape {tuple(logits.shape)}; add a batch dimension"
        )
    if chunk_size is None:
        chunk_size = default_chunk_size(logits)
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}; cast them to float")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (temperature 0 samples greedily: "
                         "there are no log-probs to train)")
    if index is not None and index.shape != logits.shape[:2]:
        raise ValueError(
            f"index shape {tuple(index.shape)} must equal logits.shape[:2] = "
            f"{tuple(logits.shape[:2])}; pass one token id per logit row"
        )
    if index is not None and index.dtype != torch.int64:
        raise ValueError(f"index must be int64 (long), got {index.dtype}; call index.long()")
    return chunk_size


def _plogp_entropy(x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """-sum_v p_v log p_v of one chunk (..., V) given its logsumexp (...), the safe way: banned
    tokens (-inf logits) have p = 0 and log p = -inf, and 0 * -inf must count as 0."""
    logp = x - lse.unsqueeze(-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)


def _scaled_chunk(logits, rs, cs, dtype, temperature: float) -> torch.Tensor:
    """One chunk of logits / temperature in the compute dtype. The division comes after the upcast,
    so bf16 logits are not rounded to bf16 a second time; on fp32 logits it gives the bits of
    dividing the whole tensor first, and saves that (N, T, V) copy and its gradient."""
    x = logits[rs, cs].to(dtype)
    return x if temperature == 1.0 else x / temperature


def _log_softmax_chunks(logits, index, chunk_tokens: int, with_entropy: bool, temperature: float):
    """The forward of the log-prob functions: per chunk one logsumexp, the sampled token's log-prob
    and, if asked, the entropy from that same logsumexp, bit-identical to `entropy_from_logits`.
    (lse - softmax(x)·x would take 0.6x the time but moves the logged entropy in its 6th digit,
    which tests/test_regression.py pins on two CPU kinds.)"""
    n, t, _ = logits.shape
    cdt = _compute_dtype(logits.dtype)
    out = torch.empty((n, t), dtype=cdt, device=logits.device)
    lse = torch.empty((n, t), dtype=cdt, device=logits.device)
    ent = torch.empty((n, t), dtype=cdt, device=logits.device) if with_entropy else None
    for rs, cs in _chunks(n, t, chunk_tokens):
        x = _scaled_chunk(logits, rs, cs, cdt, temperature)
        chunk_lse = torch.logsumexp(x, dim=-1)
        lse[rs, cs] = chunk_lse
        out[rs, cs] = x.gather(-1, index[rs, cs].unsqueeze(-1)).squeeze(-1) - chunk_lse
        if with_entropy:
            ent[rs, cs] = _plogp_entropy(x, chunk_lse)
    return out, lse, ent


class _SelectiveLogSoftmax(torch.autograd.Function):
    """The log-probs with gradients and, if asked, from the same pass the entropy without (an
    empty tensor otherwise)."""

    @staticmethod
    def forward(ctx, logits, index, chunk_tokens, with_entropy, temperature, reuse_logits):
        # logits (N, T, V), index (N, T), chunk_tokens int, with_entropy bool, temperature float, reuse_logits bool
        out, lse, ent = _log_softmax_chunks(logits, index, chunk_tokens, with_entropy, temperature)
        ent = out.new_empty(0) if ent is None else ent
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk_tokens, ctx.temperature, ctx.reuse_logits = chunk_tokens, temperature, reuse_logits
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy):  # grad_out: (N, T)
        logits, index, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        n, t, _ = logits.shape
        temperature = ctx.temperature
        if ctx.reuse_logits:
            grad = logits.detach()  # same storage and version counter: a later reader of the logits raises
        else:
            grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for rs, cs in _chunks(n, t, ctx.chunk_tokens):
            x = _scaled_chunk(logits, rs, cs, lse.dtype, temperature)
            g = grad_out[rs, cs].unsqueeze(-1).to(lse.dtype)
            # d log p_i / d x_k = 1[k = i] - p_k, with x = logits / temperature
            d = torch.exp(x - lse[rs, cs].unsqueeze(-1)).mul_(-g)
            d.scatter_add_(-1, index[rs, cs].unsqueeze(-1), g)
            grad[rs, cs] = d if temperature == 1.0 else d.div_(temperature)
        return grad, None, None, None, None, None


class _Entropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, chunk_tokens, temperature):  # (N, T, V), int, float
        n, t, _ = logits.shape
        cdt = _compute_dtype(logits.dtype)
        ent = torch.empty((n, t), dtype=cdt, device=logits.device)
        lse = torch.empty((n, t), dtype=cdt, device=logits.device)
        for rs, cs in _chunks(n, t, chunk_tokens):
            x = _scaled_chunk(logits, rs, cs, cdt, temperature)
            chunk_lse = torch.logsumexp(x, dim=-1)
            ent[rs, cs] = _plogp_entropy(x, chunk_lse)
            lse[rs, cs] = chunk_lse
        ctx.save_for_backward(logits, lse, ent)
        ctx.chunk_tokens, ctx.temperature = chunk_tokens, temperature
        return ent

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (N, T)
        logits, lse, ent = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        n, t, _ = logits.shape
        temperature = ctx.temperature
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        zero = torch.zeros((), dtype=lse.dtype, device=logits.device)
        for rs, cs in _chunks(n, t, ctx.chunk_tokens):
            x = _scaled_chunk(logits, rs, cs, lse.dtype, temperature)
            logp = x - lse[rs, cs].unsqueeze(-1)
            p = logp.exp()
            # dH / d x_k = -p_k (log p_k + H), with x = logits / temperature
            d = torch.where(p > 0, -p * (logp + ent[rs, cs].unsqueeze(-1)), zero)
            d.mul_(grad_out[rs, cs].unsqueeze(-1).to(lse.dtype))
            grad[rs, cs] = d if temperature == 1.0 else d.div_(temperature)
        return grad, None, None


def selective_log_softmax(
    logits: torch.Tensor,  # (N, T, V) float32 / float64 / bfloat16 / float16
    index: torch.Tensor,  # (N, T) int64 token ids in [0, V)
    chunk_size: int | None = None,
    temperature: float = 1.0,
    reuse_logits: bool = False,
) -> torch.Tensor:  # (N, T)
    """log softmax(logits / temperature)[n, t, index[n, t]]: the per-token log pi(o_t | q, o_<t)
    of the policy that sampled at that temperature.

    These are the log-probabilities whose differences form the importance ratio of
    DeepSeekMath GRPO (arXiv 2402.03300, eq. 3) and the clipped objective of PPO
    (arXiv 1707.06347, eq. 7). Computed as ``x[index] - logsumexp(x)`` over chunks of at most
    ``chunk_size`` token positions (None: `default_chunk_size`), so peak scratch memory is
    ``chunk_size * V`` in fp32.

    Returns fp64 for fp64 logits and fp32 otherwise (bf16/fp16 are upcast per chunk).
    Differentiable with respect to ``logits`` (first-order only); ``reuse_logits``: their
    gradient overwrites them (see the module's docstring).
    """
    return _selective(logits, index, chunk_size, False, temperature, reuse_logits)[0]


def _selective(logits, index, chunk_size: int | None, with_entropy: bool, temperature: float,
               reuse_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    chunk_size = _check_logits(logits, chunk_size, index, temperature)
    if logits.shape[0] * logits.shape[1] == 0:
        empty = logits.new_zeros(logits.shape[:2], dtype=_compute_dtype(logits.dtype))
        return empty, empty.clone()
    return _SelectiveLogSoftmax.apply(logits, index, chunk_size, with_entropy, float(temperature), bool(reuse_logits))


def selective_log_softmax_and_entropy(
    logits: torch.Tensor,  # (N, T, V) float32 / float64 / bfloat16 / float16
    index: torch.Tensor,  # (N, T) int64 token ids in [0, V)
    chunk_size: int | None = None,
    temperature: float = 1.0,
    reuse_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # (N, T) log-probs, (N, T) entropy
    """:func:`selective_log_softmax` and, from the same pass over the logits, the entropy of
    :func:`entropy_from_logits` *without* gradient: the monitored entropy (DAPO, arXiv
    2503.14476, section 3.1) of every training forward, reusing the log-probs' logsumexp
    (bit-identical to computing it apart). The log-probs are differentiable as in
    :func:`selective_log_softmax`; for an entropy bonus with a gradient use
    :func:`entropy_from_logits`."""
    return _selective(logits, index, chunk_size, True, temperature, reuse_logits)


def entropy_from_logits(
    logits: torch.Tensor,  # (N, T, V) float32 / float64 / bfloat16 / float16
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:  # (N, T)
    """Per-position entropy H = -sum_v p_v log p_v of softmax(logits / temperature), in nats.

    The token-level policy entropy whose collapse DAPO (arXiv 2503.14476, section 3.1)
    monitors and Clip-Higher is designed to counter. Chunked exactly like
    :func:`selective_log_softmax`; tokens with -inf logits (p = 0) contribute 0.

    Returns fp64 for fp64 logits and fp32 otherwise. Differentiable with respect to
    ``logits`` (first-order only).
    """
    chunk_size = _check_logits(logits, chunk_size, None, temperature)
    if logits.shape[0] * logits.shape[1] == 0:
        return logits.new_zeros(logits.shape[:2], dtype=_compute_dtype(logits.dtype))
    return _Entropy.apply(logits, chunk_size, float(temperature))
