import pytest
import torch

from grpo_trainer.algo import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy


def make(n=3, t=7, v=11, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=gen, dtype=dtype) * 3
    index = torch.randint(0, v, (n, t), generator=gen)
    return logits, index


def reference_logp(logits, index):
    return torch.log_softmax(logits.double(), -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


def reference_entropy(logits):
    logp = torch.log_softmax(logits.double(), -1)
    return -(logp.exp() * logp).sum(-1)


# chunk 1 and 5 < T = 7 split rows; 7 is one row per chunk; 14 and 100 take several rows
@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 14, 100])
def test_selective_log_softmax_matches_direct(chunk):
    logits, index = make()
    got = selective_log_softmax(logits, index, chunk_size=chunk)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    assert torch.allclose(got.double(), reference_logp(logits, index), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_entropy_matches_direct(chunk):
    logits, _ = make()
    got = entropy_from_logits(logits, chunk_size=chunk)
    assert torch.allclose(got.double(), reference_entropy(logits), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunking_never_changes_a_bit(dtype):
    """The CPU default (4 MB chunks: 20 positions at V = 50,000, so rows split into column slices)
    gives exactly the bits of 256-position chunks (whole rows, many per chunk): log-probs, their
    gradient, the entropy and its gradient. Chunk size is a speed choice only."""
    from grpo_trainer.algo.logprobs import default_chunk_size

    logits, index = make(n=3, t=50, v=50_000, dtype=dtype)
    view = logits[:, 1:]  # a non-contiguous view: chunks must stay views of it
    assert default_chunk_size(view) == 20
    runs = []
    for chunk in (None, 256):
        a = view.detach().clone().requires_grad_()
        logp, ent = selective_log_softmax_and_entropy(a, index[:, 1:], chunk_size=chunk)
        w = torch.linspace(-1, 1, logp.numel()).view_as(logp)
        (logp * w).sum().backward()
        b = view.detach().clone().requires_grad_()
        h = entropy_from_logits(b, chunk_size=chunk)
        (h * w).sum().backward()
        runs.append((logp.detach(), a.grad, ent, h.detach(), b.grad))
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_temperature_inside_equals_dividing_first():
    """temperature=T gives, on fp32 logits, the bits of dividing the logits by T first (the code
    before T moved inside), forward and gradients; on bf16 logits it is closer to the fp64 truth,
    since logits / T is no longer rounded to bf16."""
    logits, index = make(n=2, t=9, v=300)
    t = 0.7
    runs = []
    for inside in (True, False):
        a = logits.clone().requires_grad_()
        b = logits.clone().requires_grad_()
        scaled_a, scaled_b = (a, b) if inside else (a / t, b / t)
        kw = {"temperature": t} if inside else {}
        logp, ent = selective_log_softmax_and_entropy(scaled_a, index, chunk_size=4, **kw)
        w = torch.linspace(-1, 1, logp.numel()).view_as(logp)
        (logp * w).sum().backward()
        h = entropy_from_logits(scaled_b, chunk_size=4, **kw)
        (h * w).sum().backward()
        runs.append((logp.detach(), a.grad, ent, h.detach(), b.grad))
    for x, y in zip(*runs):
        assert torch.equal(x, y)
    bf = logits.to(torch.bfloat16)
    truth = reference_logp(bf.double() / t, index)
    inside_err = (selective_log_softmax(bf, index, temperature=t).double() - truth).abs().max()
    first_err = (selective_log_softmax(bf / t, index).double() - truth).abs().max()
    assert inside_err < 1e-5 < first_err
    with pytest.raises(ValueError, match="temperature must be > 0"):
        selective_log_softmax(logits, index, temperature=0.0)


def test_uniform_entropy_and_banned_tokens():
    # uniform over 4 tokens: H = ln 4 = 1.386294; log p = -1.386294
    logits = torch.zeros(1, 1, 4)
    assert entropy_from_logits(logits).item() == pytest.approx(1.386294, abs=1e-6)
    # two tokens banned with -inf: uniform over 2 -> H = ln 2 = 0.693147, no NaN
    banned = torch.tensor([[[0.0, 0.0, -float("inf"), -float("inf")]]], requires_grad=True)
    h = entropy_from_logits(banned)
    assert h.item() == pytest.approx(0.693147, abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(banned.grad).all()
    logp = selective_log_softmax(banned.detach(), torch.tensor([[1]]))
    assert logp.item() == pytest.approx(-0.693147, abs=1e-6)


def test_non_contiguous_and_bf16_inputs():
    logits, index = make(t=8)
    view = logits[:, :-1]  # the usual shift: not viewable as (N*T, V)
    got = selective_log_softmax(view, index[:, 1:], chunk_size=3)
    assert torch.allclose(got.double(), reference_logp(view, index[:, 1:]), atol=1e-5, rtol=0)
    bf = logits.to(torch.bfloat16)
    got = selective_log_softmax(bf, index, chunk_size=4)
    assert got.dtype == torch.float32  # computed in fp32, compared with fp32 math on bf16 values
    assert torch.allclose(got.double(), reference_logp(bf.float(), index), atol=1e-5, rtol=0)
    ent = entropy_from_logits(bf, chunk_size=4)
    assert torch.allclose(ent.double(), reference_entropy(bf.float()), atol=1e-5, rtol=0)


def test_gradients_match_autograd_of_direct_formula():
    logits, index = make(dtype=torch.float64)
    w = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    (selective_log_softmax(a, index, chunk_size=4) * w).sum().backward()
    (reference_logp(b, index) * w).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    a.grad = None
    b.grad = None
    (entropy_from_logits(a, chunk_size=4) * w).sum().backward()
    (reference_entropy(b) * w).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_pass_gives_both_values_and_the_log_probs_gradient(chunk, dtype):
    logits, index = make(dtype=dtype)
    logits[0, 2, :4] = -float("inf")  # banned tokens count 0, not NaN
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    logp, ent = selective_log_softmax_and_entropy(a, index, chunk_size=chunk)
    assert logp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
    assert torch.allclose(logp.double(), reference_logp(logits.float(), index), atol=1e-5, rtol=0)
    direct = entropy_from_logits(logits, chunk_size=chunk)  # the elementwise formula
    assert torch.equal(ent, direct)  # the same arithmetic, the log-probs' logsumexp reused
    w = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    (logp * w).sum().backward()
    (selective_log_softmax(b, index, chunk_size=chunk) * w).sum().backward()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [False, True])
def test_reusing_the_logits_memory_gives_the_same_gradients_in_it(temperature, dtype, fused):
    # The logits as a layer's output, as in the model: h -> h @ W^T -> log-probs. With reuse_logits
    # the logits' gradient is the logits' own storage and the gradients of h and W keep their bits.
    gen = torch.Generator().manual_seed(2)
    h0 = torch.randn(3, 7, 5, generator=gen).to(dtype)
    w0 = torch.randn(11, 5, generator=gen).to(dtype)
    index = torch.randint(0, 11, (3, 7), generator=gen)
    weights = torch.randn(3, 7, generator=gen)
    grads, storage = [], []
    for reuse in (False, True):
        h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        logits = h @ w.T  # (3, 7, 11)
        logits.register_hook(lambda g, logits=logits: storage.append(g.data_ptr() == logits.data_ptr()))
        if fused:
            logp = selective_log_softmax_and_entropy(logits, index, chunk_size=5, temperature=temperature,
                                                     reuse_logits=reuse)[0]
        else:
            logp = selective_log_softmax(logits, index, chunk_size=5, temperature=temperature, reuse_logits=reuse)
        (logp * weights).sum().backward()
        grads.append((h.grad, w.grad))
    assert storage == [False, True]
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_reused_logits_that_another_node_saved_fail_loudly():
    # An entropy with a gradient reads the logits in its backward. Autograd runs the later-made
    # node first: made after the log-probs, it reads them before they are overwritten (the same
    # gradient); made before, its read must raise torch's in-place error, never give a wrong one.
    logits, index = make()
    grads = []
    for reuse in (False, True):
        x = logits.clone().requires_grad_(True)
        y = x * 1.0
        (selective_log_softmax(y, index, reuse_logits=reuse) + entropy_from_logits(y)).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])
    y = logits.clone().requires_grad_(True) * 1.0
    out = entropy_from_logits(y) + selective_log_softmax(y, index, reuse_logits=True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        out.sum().backward()


def test_gradcheck_fp64():
    logits, index = make(n=2, t=3, v=5, dtype=torch.float64)
    x = logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, index, chunk_size=2), (x,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, chunk_size=2), (x,))


def test_bf16_graph_never_saves_a_full_fp32_copy():
    # Recording autograd per chunk would save every chunk's fp32 upcast: a full (N, T, V) fp32
    # tensor in total. Only (N, T) tensors and the bf16 logits themselves may be kept.
    logits, index = make(n=4, t=8, v=32, dtype=torch.bfloat16)
    logits.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_log_softmax(logits, index, chunk_size=4) + entropy_from_logits(
            logits, chunk_size=4
        )
    fp32_big = [s for s in saved if s[0] != torch.bfloat16 and s[1] > 4 * 8]
    assert saved and not fp32_big, saved
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.shape == (4, 8, 32)


def test_invalid_arguments():
    logits, index = make()
    with pytest.raises(ValueError, match="int64"):
        selective_log_softmax(logits, index.int())
    with pytest.raises(ValueError, match="must equal logits.shape"):
        selective_log_softmax(logits, index[:, :-1])
    with pytest.raises(ValueError, match=r"\(N, T, V\)"):
        entropy_from_logits(logits[0])
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits(logits, chunk_size=0)
