"""The learned value function of PPO (algorithm.advantage=gae): model, old values, update.

The critic is the policy's architecture with a scalar head, stored as transformers'
`*ForTokenClassification` with `num_labels=1` (the head is its `score` layer): a checkpoint's
`critic/` loads with `AutoModelForTokenClassification.from_pretrained(critic/)` and gives one
value per position (with model.lora the critic is a LoRA too, and `critic/` holds its peft
adapter, head included: PeftModel.from_pretrained(that model from the base, critic/)). It starts from the policy's weights with the head at zero (so V = 0 and the
first advantages are discounted returns, as with REINFORCE), or from `model.critic_path`.

Each step, before any update, the critic values every state once (the "old" values V_old, which
GAE and the clipped value loss both read); then it regresses on the GAE returns over the same
`num_iterations` x `num_mini_batches` as the policy, with its own optimizer, scheduler, gradient
clipping and micro-batching. Normalisers are global token counts, as in update.py, so 1 vs 4
micro-batches or 1 vs 2 processes give the same update.

Launch modes: one process and DDP through accelerate like the policy. Under DeepSpeed ZeRO-2 the
critic is a second DeepSpeed engine (accelerate prepares it; its own engine wrapper marks the
accumulation boundary, as accelerate's does for the policy, see distributed.py). ZeRO-3 is
refused in one line: its parameter gathers would have to run in lockstep for two models.
"""

from __future__ import annotations

import logging
import math

import torch
from transformers import get_scheduler
from transformers.modeling_outputs import CausalLMOutputWithPast

from grpo_trainer import algo, attention, distributed, lora
from grpo_trainer.forward import completion_values, record_micro_batches, record_per_token
from grpo_trainer.lora import is_peft
from grpo_trainer.models import DTYPES, use_training_kernels
from grpo_trainer.record import RolloutRecord
from grpo_trainer.step_stats import StepStats
from grpo_trainer.update import mini_batches

log = logging.getLogger(__name__)


class ValueModel(torch.nn.Module):
    """A `*ForTokenClassification` (num_labels=1) called like a causal LM by forward.py: the same
    arguments (key/value cache, `logits_to_keep`), with `logits` (B, L, 1) holding values."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                logits_to_keep: int = 0):
        # Under LoRA the adapters sit inside the wrapped model's layers, and its head is peft's
        # trained copy of `score`: the same two modules are called either way.
        inner = self.backbone.get_base_model() if is_peft(self.backbone) else self.backbone
        trunk = getattr(inner, inner.base_model_prefix)
        out = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        # No dropout (the checkpoint's config says 0): an update must be a function of its batch.
        return CausalLMOutputWithPast(logits=inner.score(hidden).float(), past_key_values=out.past_key_values)


def load_value_model(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                     attention_gib: float = attention.DEFAULT_GIB, onednn_linear: bool = True) -> ValueModel:
    """A critic from `path`: a critic checkpoint (its head loaded) or a causal LM (head set to 0)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=trust_remote_code)
    config.classifier_dropout = 0.0  # saved with it: the head never drops out
    backbone, info = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
        attn_implementation=attention.implementation(attention_gib),
        output_loading_info=True)
    fresh = [k for k in info["missing_keys"] if k.startswith("score.")]
    if fresh:
        with torch.no_grad():
            for p in backbone.score.parameters():
                p.zero_()
    unused = [k for k in info["missing_keys"] if not k.startswith("score.")]
    if unused:
        raise ValueError(f"{path} does not hold a full model for the critic (missing {unused[:3]}): pass the "
                         "policy's model directory or a critic/ directory of a checkpoint as model.critic_path")
    backbone.config.architectures = [type(backbone).__name__]
    use_training_kernels(backbone, onednn_linear)
    return ValueModel(backbone)


class Critic:
    """The critic under accelerate: `values` before the update, `update` after the advantages."""

    def __init__(self, acc, cfg, algorithm, model_path: str, model_cfg, max_steps: int, share_prompt: bool):
        self.acc, self.cfg, self.a, self.share_prompt = acc, cfg, algorithm, share_prompt
        if distributed.zero_stage(acc) == 3:
            raise ValueError("algorithm.advantage=gae trains a critic beside the policy, which ZeRO-3 does not "
                             "support here: launch with configs/accelerate/cpu_zero2.yaml (or zero2.yaml) or DDP")
        model = load_value_model(model_cfg.critic_path or model_path, model_cfg.dtype, model_cfg.trust_remote_code,
                                 model_cfg.attention_gib, model_cfg.onednn_linear)
        if model_cfg.gradient_checkpointing:
            model.backbone.gradient_checkpointing_enable()
        # With model.lora the critic is a LoRA too (same rank and targets), its head trained in full.
        model.backbone = lora.wrap(model.backbone, model_cfg.lora, model_cfg.gradient_checkpointing, "TOKEN_CLS")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      fused=distributed.deepspeed_plugin(acc) is None)
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=max_steps)
        self.model, self.optimizer, self.scheduler, self.engine = distributed.prepare_second(
            acc, model, optimizer, scheduler, cfg.max_grad_norm)

    # ------------------------------------------------------------------ values
    def _values(self, mb) -> torch.Tensor:  # (M, C) float32
        return completion_values(self.model, mb, self.share_prompt)

    def values(self, record: RolloutRecord) -> torch.Tensor:
        """(N, C) float32: V of the state before every completion token, without gradients; 0 at padding."""
        return record_per_token(record, self._values, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens,
                                self.acc.device)

    # ------------------------------------------------------------------ update
    def update(self, record: RolloutRecord, old_values: torch.Tensor, returns: torch.Tensor, stats: StepStats) -> None:
        """Regress V on `returns` (N, C) with the clipped value loss, in the policy's mini-batches
        (rows k::num_mini_batches); adds critic/* sums to `stats`."""
        a, acc = self.a, self.acc
        minis = mini_batches(acc, record, a.num_mini_batches)
        old, ret = old_values.to(acc.device), returns.to(acc.device)
        sums = {"loss": 0.0, "clipped": 0.0, "tokens": 0.0}
        grad_norm = torch.tensor(0.0)
        self.model.train()
        for _ in range(a.num_iterations):
            for rows, stand_in, total, _ in minis:
                # A process with no rows here still takes part in the gradient all-reduce (zero weight).
                plan = rows or [stand_in]
                mbs = [mb.to(acc.device) for mb in record_micro_batches(record, plan, self.cfg.micro_batch_size,
                                                                        self.cfg.micro_batch_tokens)]
                for k, mb in enumerate(mbs):
                    last = k == len(mbs) - 1
                    r = torch.tensor(mb.rows, device=acc.device)
                    C = mb.loss_mask.shape[1]
                    with distributed.accumulate(acc, self.model, last):
                        v = self._values(mb)
                        per_token, clip = algo.clipped_value_loss(v, old[r, :C], ret[r, :C], mb.loss_mask,
                                                                  a.value_clip)
                        loss = per_token.sum() / max(total, 1.0)
                        weight = acc.num_processes if rows else 0.0  # DDP averages over processes
                        distributed.backward(acc, loss * weight, self.engine, last)
                    if rows:
                        m = mb.loss_mask.sum().item()
                        sums["loss"] += per_token.sum().item()
                        sums["clipped"] += clip["clip_frac"].item() * m
                        sums["tokens"] += m
                grad_norm = distributed.clip_and_step(acc, self.model, self.optimizer, self.cfg.max_grad_norm,
                                                      self.engine)
        for key, value in sums.items():
            stats.add(f"critic/{key}", value)
        stats.peak("critic/grad_norm", float(grad_norm))
        m = record.loss_mask
        stats.add("critic/value_sum", old_values[m].double().sum().item())
        stats.add("critic/return_sum", returns[m].double().sum().item())
        for key, value in zip(("n", "r", "r2", "d", "d2"), algo.value_moments(old_values, returns, m).tolist()):
            stats.add(f"critic/ev_{key}", value)

    @staticmethod
    def metrics(tot: dict[str, float]) -> dict:
        """The logged critic/* metrics from the step's reduced StepStats (NaN when not measured)."""
        tok, n = tot["critic/tokens"], tot["critic/ev_n"]
        ev = algo.explained_variance(torch.tensor([tot[f"critic/ev_{k}"] for k in ("n", "r", "r2", "d", "d2")],
                                                  dtype=torch.float64))
        return {"critic/value_loss": tot["critic/loss"] / tok if tok else math.nan,
                "critic/value_clip_frac": tot["critic/clipped"] / tok if tok else math.nan,
                "critic/explained_var": ev, "critic/grad_norm": tot["critic/grad_norm"],
                "critic/value_mean": tot["critic/value_sum"] / n if n else math.nan,
                "critic/return_mean": tot["critic/return_sum"] / n if n else math.nan}

    # ------------------------------------------------------------------ checkpoints
    def backbone(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model).backbone
