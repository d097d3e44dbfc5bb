"""The micro-batched policy update (grpo_trainer/update.py) on a tiny fp64 Llama, no engine.

With plain SGD at lr = 1 the parameter change is exactly minus the gradient, so updates can be
compared to each other and to a direct full-batch computation of the same objective. One test
runs the fp32 model under accelerate's bf16 autocast instead, in a fresh interpreter
(tests/bf16_casts.py), to count weight casts."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from grpo_trainer import algo
from grpo_trainer.config import AlgorithmConfig, RolloutCorrectionConfig
from grpo_trainer.forward import completion_logprobs, completion_outputs, pack
from grpo_trainer.models import load_causal_lm
from grpo_trainer.record import RolloutRecord
from grpo_trainer.rollout import RolloutBatch
from grpo_trainer.update import PolicyUpdater

G, MAX_LEN = 4, 8
# transformers' RMSNorm computes in fp32 even in an fp64 model, so gradients through it carry fp32
# rounding; the shared-prompt forward sums a prompt's gradient over its rows in a batch-dependent
# order. Updates here are ~0.4 in size: 1e-6 is ~3e-6 relative, far below any real difference.
FP32_ROUNDING = 1e-6


@pytest.fixture(scope="module")
def base_model(tiny_llama):
    return load_causal_lm(str(tiny_llama)).double()


def make_record(prompts, completions, logprobs, advantages) -> RolloutRecord:
    batch = RolloutBatch(prompts, completions, logprobs, [False] * len(completions))
    return RolloutRecord.from_batch(batch, list(range(len(prompts))), 0, [""] * len(completions)).with_advantages(
        advantages)


@pytest.fixture(scope="module")
def step_batch() -> RolloutRecord:
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 4000, (int(n),), generator=gen).tolist() for n in (5, 9)]
    lengths = [3, 8, 5, 1, 7, 2, 8, 4]
    completions = [torch.randint(3, 4000, (n,), generator=gen).tolist() for n in lengths]
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75, 0.0, 0.0, 0.0, 0.0])  # group 2: zero
    return make_record(prompts, completions, [[-1.0] * n for n in lengths], adv)


def rows_of(record: RolloutRecord):
    """(row prompts, completions, per-row advantage, per-row in-loss) as the direct computation reads them."""
    prompts = [record.prompt_ids[g, :n].tolist() for g, n in zip(record.group.tolist(),
                                                                 record.prompt_lens[record.group].tolist())]
    return prompts, record.completion_lists(), record.advantages[:, 0].double(), record.in_loss


class FrozenOldUpdater(PolicyUpdater):
    """The path before the correction read the training forward: always a no-grad pass for pi_old."""

    need_old = True


def run_update(model, batch: RolloutRecord, micro_batch_size: int, checkpointing: bool = False,
               updater_cls=PolicyUpdater, lr: float = 1.0, **algo_kwargs):
    model = copy.deepcopy(model)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.train()  # as after a previous step: checkpointed layers then drop the key/value cache
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    a = dataclasses.replace(AlgorithmConfig(), **algo_kwargs)
    updater = updater_cls(Accelerator(cpu=True), model, opt, None, 0, a, 1.0, micro_batch_size, 1e9, MAX_LEN,
                          share_prompt=not checkpointing)
    metrics = updater.update(batch, beta=0.0)
    delta = [(b - p.detach()) for b, p in zip(before, model.parameters())]  # = gradient (lr 1)
    return delta, metrics


def direct_gradient(model, batch: RolloutRecord, mode: str, rows=None, policy_loss: str = "ppo_clip",
                    correction: RolloutCorrectionConfig | None = None) -> list[torch.Tensor]:
    """The objective written out once for the whole batch, every row in one forward."""
    model = copy.deepcopy(model)
    prompts, completions, advantages, in_loss = rows_of(batch)
    rows = list(range(len(completions))) if rows is None else rows
    mb = pack(rows, [prompts[i] for i in rows], [completions[i] for i in rows], 0)
    logp, _ = completion_logprobs(model, mb, 1.0)
    entry = algo.POLICY_LOSSES[policy_loss]
    per_tok, _ = entry.fn(logp, logp.detach(), advantages[rows], mb.completion_mask,
                          **entry.bind(vars(AlgorithmConfig())))
    if correction is not None:
        engine = batch.logprobs[rows, :logp.shape[1]]
        w, _ = algo.correction_weights(logp.detach(), engine, mb.completion_mask, correction.level, correction.mode,
                                       correction.lower, correction.upper)
        per_tok = per_tok * w
    tokens = float(sum(len(completions[i]) for i in rows if in_loss[i]))
    seqs = float(sum(1 for i in rows if in_loss[i]))
    mask = mb.completion_mask & in_loss[rows].unsqueeze(1)
    algo.aggregate_loss(per_tok, mask, mode, tokens, seqs, MAX_LEN).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def trainer_logprobs(model, batch: RolloutRecord) -> torch.Tensor:
    """(N, C) the untouched model's log-probs of the batch's completions (pi_old), 0 at padding."""
    prompts, completions, _, _ = rows_of(batch)
    mb = pack(list(range(batch.num_rows)), prompts, completions, 0)
    with torch.no_grad():
        logp, _ = completion_logprobs(copy.deepcopy(model), mb, 1.0)
    return torch.where(batch.valid, logp.float(), 0.0)


def with_engine_shift(model, batch: RolloutRecord, shift: torch.Tensor) -> RolloutRecord:
    """The batch as if an engine had reported pi_old's log-probs + shift (N, C) (rho = exp(-shift))."""
    return dataclasses.replace(batch, logprobs=torch.where(batch.valid, trainer_logprobs(model, batch) + shift, 0.0))


# Sequence-level MIS: rows 0 and 3 (mean shifts 1.0 and -1.0, rho 0.37 and 2.7) leave [0.5, 2]
# and drop out; rows 1 and 2 stay with their geometric-mean weights.
ROW_SHIFT = torch.tensor([0.9, 0.05, -0.3, -1.0, 0.0, 0.0, 0.0, 0.0])[:, None] + 0.1 * (torch.arange(MAX_LEN) % 3)
SEQ_MIS = RolloutCorrectionConfig("sequence", "mask")


@pytest.mark.parametrize("objective", ["ppo_clip", "gspo", "cispo", "seq_mis"])
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_one_vs_four_micro_batches_give_the_same_update(base_model, step_batch, mode, objective):
    batch, kwargs, correction = step_batch, {"policy_loss": objective}, None
    if objective == "seq_mis":
        batch, kwargs, correction = with_engine_shift(base_model, step_batch, ROW_SHIFT), {}, SEQ_MIS
        kwargs["rollout_correction"] = correction
    one, m1 = run_update(base_model, batch, micro_batch_size=8, loss_agg=mode, **kwargs)
    four, m4 = run_update(base_model, batch, micro_batch_size=1, loss_agg=mode, **kwargs)
    assert max((a - b).abs().max().item() for a, b in zip(one, four)) < 1e-6
    assert sum(a.abs().sum().item() for a in one) > 1e-3  # a real, non-zero update
    # Equal to the objective computed directly over all 8 rows, the zero-advantage ones included.
    direct = direct_gradient(base_model, batch, mode, policy_loss=kwargs.get("policy_loss", "ppo_clip"),
                             correction=correction)
    assert max((a - b).abs().max().item() for a, b in zip(one, direct)) < FP32_ROUNDING
    assert m4["train/rows_trained"] == 4.0  # the 4 zero-advantage rows were never forwarded
    if objective == "seq_mis":  # rows 0 and 3 (3 + 1 of the 17 trained tokens) were masked out
        assert m1["mismatch/corrected_frac"] == m4["mismatch/corrected_frac"] == pytest.approx(4 / 17)
        assert m1["mismatch/seq_out_frac"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("objective", ["gspo", "gspo_token", "cispo"])
def test_one_vs_four_micro_batches_off_policy(base_model, step_batch, objective):
    # Two passes over two mini-batches: every optimizer step after the first sees a ratio != 1, so
    # the clipping (GSPO: of whole sequences) and CISPO's weights are exercised.
    # lr 0.1: the tiny random model still moves far (KL(old || new) ~ 24 nats/token in pass 2), and
    # four steps amplify RMSNorm's fp32 rounding to ~1e-6 of the update, hence 1e-5 relative.
    kwargs = {"policy_loss": objective, "num_iterations": 2, "num_mini_batches": 2, "loss_agg": "seq_mean_token_mean"}
    one, m1 = run_update(base_model, step_batch, micro_batch_size=8, lr=0.1, **kwargs)
    four, m4 = run_update(base_model, step_batch, micro_batch_size=1, lr=0.1, **kwargs)
    scale = max(a.abs().max().item() for a in one)
    assert max((a - b).abs().max().item() for a, b in zip(one, four)) < 1e-5 * scale and scale > 1e-2
    for key in ("train/clip_frac_low", "train/clip_frac_high", "train/kl_old_new"):
        assert m1[key] == pytest.approx(m4[key], rel=1e-5, abs=1e-9), key
    # Some ratios left even CISPO's range.
    assert m1["train/clip_frac_low"] + m1["train/clip_frac_high"] > 0


def test_correction_at_one_pass_reads_the_training_forward(base_model, step_batch):
    # pi_old for the correction at mu = 1, one mini-batch: the training forward's own detached
    # log-probs. The path that froze them in a no-grad pass first gives the same update with twice
    # the forwards (with the shared prompt each log-prob computation is 2 model calls).
    batch = with_engine_shift(base_model, step_batch, 0.1 * (torch.arange(MAX_LEN) % 3 - 1))  # rho e^0.1, 1, e^-0.1
    model, calls = copy.deepcopy(base_model), []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    kwargs = {"rollout_correction": RolloutCorrectionConfig("token", "truncate", upper=1.05)}
    new, m_new = run_update(model, batch, micro_batch_size=8, **kwargs)
    forwards_new = len(calls)
    old, m_old = run_update(model, batch, micro_batch_size=8, updater_cls=FrozenOldUpdater, **kwargs)
    assert (forwards_new, len(calls) - forwards_new) == (2, 4)
    assert max((a - b).abs().max().item() for a, b in zip(new, old)) < FP32_ROUNDING
    # Truncated: the tokens at t % 3 == 0 (rho = e^0.1 > 1.05), 7 of the 17 trained.
    assert m_new["mismatch/corrected_frac"] == m_old["mismatch/corrected_frac"] == pytest.approx(7 / 17)
    assert m_new["train/tis_weight_mean"] == pytest.approx((7 * 1.05 + 6 * 1.0 + 4 * math.exp(-0.1)) / 17, rel=1e-5)


def test_overlong_filter_removes_rows_from_loss_and_normaliser(base_model, step_batch):
    batch = step_batch.without_rows_in_loss(torch.tensor([False, True, False, False] + [False] * 4))
    got, metrics = run_update(base_model, batch, micro_batch_size=3)
    direct = direct_gradient(base_model, batch, "token_mean")
    assert max((a - b).abs().max().item() for a, b in zip(got, direct)) < FP32_ROUNDING
    assert metrics["train/rows_trained"] == 3.0
    unmasked, _ = run_update(base_model, step_batch, micro_batch_size=3)
    assert max((a - b).abs().max().item() for a, b in zip(got, unmasked)) > 1e-6


def test_tis_weights_scale_the_gradient_at_the_cap(base_model, step_batch):
    plain, _ = run_update(base_model, step_batch, micro_batch_size=8, num_iterations=1)
    # Engine log-probs far below the trainer's: every ratio pi_trainer / pi_engine exceeds the cap
    # of 2, so each token's weight is exactly 2 and the whole gradient doubles.
    far = dataclasses.replace(step_batch, logprobs=torch.where(step_batch.valid, -60.0, 0.0))
    tis, metrics = run_update(base_model, far, micro_batch_size=8,
                              rollout_correction=RolloutCorrectionConfig("token", "truncate", upper=2.0))
    assert metrics["train/tis_weight_mean"] == pytest.approx(2.0)
    assert max((2 * a - b).abs().max().item() for a, b in zip(plain, tis)) < 1e-9


def test_target_kl_stops_the_passes(base_model, step_batch):
    # Pass 1 starts at pi_old, so its measured drift is 0; from pass 2 on the policy has moved
    # (SGD at lr 1 moves it far), so a tiny target stops after the first mini-batch of pass 2.
    _, stopped = run_update(base_model, step_batch, micro_batch_size=8, num_iterations=4, target_kl=1e-12)
    assert stopped["train/passes"] == 2.0
    _, full = run_update(base_model, step_batch, micro_batch_size=8, num_iterations=4, target_kl=1e9)
    assert full["train/passes"] == 4.0


def test_mini_batches_take_one_optimizer_step_each(base_model, step_batch):
    one_step, _ = run_update(base_model, step_batch, micro_batch_size=8, num_mini_batches=1)
    two_steps, _ = run_update(base_model, step_batch, micro_batch_size=8, num_mini_batches=2)
    # Two half-batch SGD steps differ from one full step (the second sees moved weights).
    assert max((a - b).abs().max().item() for a, b in zip(one_step, two_steps)) > 1e-6


def test_zero_advantage_rows_are_skipped_exactly(base_model, step_batch):
    skipped, m_skip = run_update(base_model, step_batch, micro_batch_size=8)
    trained, m_all = run_update(base_model, step_batch, micro_batch_size=8, skip_zero_advantage=False)
    assert (m_skip["train/rows_trained"], m_all["train/rows_trained"]) == (4.0, 8.0)
    assert max((a - b).abs().max().item() for a, b in zip(skipped, trained)) < FP32_ROUNDING


def test_gradient_checkpointing_takes_the_plain_layout_in_every_forward(base_model, step_batch):
    # Two passes need old log-probs from a no-grad forward of the training-mode policy; with
    # checkpointing on, the shared-prompt layout would find no key/value cache there.
    plain, _ = run_update(base_model, step_batch, micro_batch_size=3, num_iterations=2)
    checkpointed, metrics = run_update(base_model, step_batch, micro_batch_size=3, checkpointing=True,
                                       num_iterations=2)
    assert metrics["train/passes"] == 2.0
    # Two SGD passes at lr 1 make a larger update than one (hence relative): fp32 rounding only.
    scale = max(a.abs().max().item() for a in plain)
    assert max((a - b).abs().max().item() for a, b in zip(plain, checkpointed)) < FP32_ROUNDING * scale
    assert scale > 0.5


@pytest.mark.parametrize("algo_kwargs", [{}, {"num_iterations": 2, "num_mini_batches": 2}], ids=["one", "passes"])
def test_mismatch_metrics_compare_the_engine_with_pi_old(base_model, step_batch, algo_kwargs):
    # The "engine" reports pi_old's log-probs (a direct forward of the untouched model) shifted by
    # s = 0.1 * (t % 3) nats at token t. With two passes over two mini-batches, mini-batch 2 of
    # pass 1 runs after an SGD step at lr 1: only frozen old log-probs still give these values.
    batch = with_engine_shift(base_model, step_batch, 0.1 * (torch.arange(MAX_LEN) % 3))
    # A band that 0.1 leaves (rho = e^-0.1 = 0.905 < 0.91): monitoring only, no correction.
    band = RolloutCorrectionConfig(lower=0.91)
    _, metrics = run_update(base_model, batch, micro_batch_size=3, rollout_correction=band, **algo_kwargs)
    # Rows 4-7 have advantage 0 and are not forwarded: compared are rows 0-3, 3 + 8 + 5 + 1 = 17
    # tokens, whose shifts t % 3 = 0, 1, 2 occur 7, 6, 4 times (row lengths 3, 8, 5, 1).
    # k3 at x = -s: e^-s + s - 1 = 0 (s = 0), 0.00483742 (s = 0.1), 0.01873075 (s = 0.2);
    # mean = (6 * 0.00483742 + 4 * 0.01873075) / 17 = 0.00611454
    assert metrics["mismatch/tokens"] == 17
    assert metrics["mismatch/kl"] == pytest.approx(0.00611454, rel=1e-4)
    assert metrics["mismatch/max_abs_logp_diff"] == pytest.approx(0.2, abs=1e-5)
    assert metrics["mismatch/mean_abs_logp_diff"] == pytest.approx((6 * 0.1 + 4 * 0.2) / 17, rel=1e-4)
    # rho = e^-0.1, e^-0.2 leave [0.91, 2]: 6 + 4 tokens. Row means of the shifts: 0.1 (row 0,
    # rho 0.905: out), 0.0875, 0.08, 0 (rows 1-3: in).
    assert metrics["mismatch/token_out_frac"] == pytest.approx(10 / 17)
    assert metrics["mismatch/seq_out_frac"] == pytest.approx(1 / 4)
    assert metrics["mismatch/corrected_frac"] == 0.0


def test_nothing_trained_logs_missing_not_zero(base_model, step_batch):
    # Every advantage 0: no row is forwarded, so entropy, clip fractions and the canary measured
    # nothing; with no reference (and one pass, no TIS) KL, old-new KL and TIS never exist.
    zero = step_batch.with_advantages(torch.zeros(step_batch.num_rows))
    _, metrics = run_update(base_model, zero, micro_batch_size=4)
    assert metrics["train/rows_trained"] == 0
    for key in ("train/entropy", "train/clip_frac_low", "train/clip_frac_high", "train/kl", "train/kl_old_new",
                "train/tis_weight_mean", "mismatch/kl"):
        assert math.isnan(metrics[key]), key
    _, metrics = run_update(base_model, step_batch, micro_batch_size=4)
    assert metrics["train/entropy"] > 0 and metrics["train/clip_frac_low"] == 0.0  # measured: one pass, ratio 1
    assert math.isnan(metrics["train/kl"])  # still no reference


@pytest.mark.parametrize("algo_kwargs", [{}, {"num_iterations": 2, "num_mini_batches": 2}], ids=["one", "passes"])
def test_captured_rows_hold_the_trainer_values_of_the_sampling_policy(base_model, step_batch, algo_kwargs):
    # The sample log's per-token values, taken from the update's own forwards: the trainer's
    # log-probs under the weights that sampled (pi_old, even where mini-batch 2 runs after an
    # optimizer step) and the entropy, equal to a direct forward of the untouched model.
    rows = list(range(8))
    prompts, completions, _, _ = rows_of(step_batch)
    with torch.no_grad():
        logp, entropy = completion_logprobs(copy.deepcopy(base_model), pack(rows, prompts, completions, 0), 1.0,
                                            with_entropy=True)
    model = copy.deepcopy(base_model)
    a = dataclasses.replace(AlgorithmConfig(), **algo_kwargs)
    updater = PolicyUpdater(Accelerator(cpu=True), model, torch.optim.SGD(model.parameters(), lr=1.0), None, 0, a,
                            1.0, 3, 1e9, MAX_LEN)
    updater.capture = {0, 1, 4}
    updater.update(step_batch, beta=0.0)
    assert sorted(updater.captured) == [0, 1]  # row 4 has advantage 0: never forwarded, nothing to show
    for i in (0, 1):
        n = int(step_batch.completion_lens[i])
        got = updater.captured[i]
        assert got["trainer_logp"].shape == got["entropy"].shape == got["clipped"].shape == (n,)
        assert torch.allclose(got["trainer_logp"].double(), logp[i, :n], atol=1e-6)
        if not algo_kwargs:  # the one forward of the one pass: its entropy is pi_old's
            assert torch.allclose(got["entropy"].double(), entropy[i, :n], atol=1e-6)
            assert not got["clipped"].any()  # ratio 1 by construction


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_captured_clip_flags_follow_the_policy_losses_own_clip(base_model, step_batch, loss):
    # Two passes with SGD lr 1: pass 2 sees each row's ratio moved in its advantage's direction, so
    # GSPO's sequence ratio is far outside its 3e-4/4e-4 band (every token of such a row is flagged,
    # as GSPO clips whole sequences) and CISPO's capped weight acts on some tokens. The flags are the
    # tokens the loss's clip fractions count, not ppo_clip's rule applied to another loss.
    model = copy.deepcopy(base_model)
    a = dataclasses.replace(AlgorithmConfig(), policy_loss=loss, num_iterations=2)
    updater = PolicyUpdater(Accelerator(cpu=True), model, torch.optim.SGD(model.parameters(), lr=1.0), None, 0, a,
                            1.0, 3, 1e9, MAX_LEN)
    updater.capture = {0, 1, 2, 3}
    metrics = updater.update(step_batch, beta=0.0)
    flags = [updater.captured[i]["clipped"] for i in sorted(updater.captured)]
    assert any(f.any() for f in flags)
    if loss == "gspo":
        assert all(f.all() or not f.any() for f in flags)  # one verdict per sequence
        assert metrics["train/clip_frac_low"] + metrics["train/clip_frac_high"] > 0


def test_the_entropy_bonus_has_its_gradient(base_model, step_batch):
    # Every advantage 0: the update is the bonus alone, -coef * token-mean entropy, whose gradient
    # is written out here with the elementwise formula on the full log-softmax.
    coef = 0.5
    batch = step_batch.with_advantages(torch.zeros(step_batch.num_rows))
    delta, metrics = run_update(base_model, batch, 3, entropy_coef=coef)
    model = copy.deepcopy(base_model)
    prompts, completions, _, _ = rows_of(batch)
    mb = pack(list(range(batch.num_rows)), prompts, completions, 0)
    outputs = completion_outputs(model, mb)
    logp_full = torch.cat([torch.log_softmax(logits[:, :tokens.shape[1]].double(), -1)  # (M, C, V)
                           for logits, tokens in outputs], dim=1)
    entropy = -(logp_full.exp() * logp_full).sum(-1)
    mask = mb.completion_mask
    (-coef * (entropy * mask).sum() / mask.sum()).backward()
    for d, p in zip(delta, model.parameters()):
        assert torch.allclose(d, p.grad, atol=FP32_ROUNDING, rtol=0)
    assert max(float(d.abs().max()) for d in delta) > 1e-3  # the bonus moved the weights
    assert metrics["train/entropy"] == pytest.approx(float((entropy.detach() * mask).sum() / mask.sum()), rel=1e-6)


def test_clip_higher_acts_only_off_policy(base_model, step_batch):
    """DAPO's clip-higher (eps_high 0.28 > eps_low 0.2) changes nothing with one optimizer step per
    rollout batch: the policy being updated is the one that sampled, every ratio is exactly 1 and no
    token is clipped (ratio-1 clip fractions 0, the update the same as with the symmetric range).
    With four mini-batches the later ones see moved ratios, tokens are clipped and the two ranges
    give different updates; hence recipes/dapo_synthetic_smollm2.yaml's num_mini_batches: 4."""
    def update(mini_batches, eps_high):  # SGD lr 0.03: some later ratios land in (1.2, 1.28], some beyond
        return run_update(base_model, step_batch, micro_batch_size=8, lr=0.03, num_mini_batches=mini_batches,
                          eps_low=0.2, eps_high=eps_high)

    (sym1, m_sym1), (high1, m_high1) = update(1, 0.2), update(1, 0.28)
    assert m_high1["train/clip_frac_low"] == m_high1["train/clip_frac_high"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(sym1, high1))
    (sym4, m_sym4), (high4, m_high4) = update(4, 0.2), update(4, 0.28)
    assert m_sym4["train/kl_old_new"] > 0 and m_sym4["train/clip_frac_high"] > 0
    assert m_high4["train/clip_frac_high"] < m_sym4["train/clip_frac_high"]
    assert max((a - b).abs().max().item() for a, b in zip(sym4, high4)) > 1e-6


def test_bf16_autocast_casts_each_weight_once_a_micro_batch(tiny_llama):
    # accelerate autocasts inside each call of a prepared model; the update's two calls per
    # micro-batch (prompts, then completions) must share one region, or every weight is cast to
    # bf16 (and its gradient back) twice. A fresh interpreter: one AcceleratorState per process.
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(repo / "tests/bf16_casts.py"), str(tiny_llama)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["mixed"] == "bf16" and counts["micro_batches"] == 1
    assert counts["policy"] == 1  # one training forward (at one pass pi_old is its own detached log-probs)
    assert counts["critic"] == 1
