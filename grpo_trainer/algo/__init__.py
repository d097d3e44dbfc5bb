"""Pure-math core of GRPO/DAPO: tensors in, tensors out.

- logprobs:   selective_log_softmax, selective_log_softmax_and_entropy, entropy_from_logits
- advantages: group_advantages (dispatch), grpo_advantages, dr_grpo_advantages,
              rloo_advantages, reinforce_advantages, softmax_advantages, reinforce_pp_advantages,
              reinforce_pp_baseline_advantages
- gae:        token_rewards, gae_advantages, whiten, masked_moments, clipped_value_loss,
              explained_variance, value_moments (PPO with a learned critic)
- loss:       clipped_policy_loss, aggregate_loss, tis_weights
- objectives: gspo_policy_loss, gspo_token_policy_loss, cispo_policy_loss, sequence_mean
- correction: correction_weights (rollout correction: token/sequence x truncate/mask), mismatch_stats
- kl:         kl_estimate, adaptive_kl_beta, logprob_mismatch
- covariance: ENTROPY_CONTROLS, logp_adv_covariance, select_covariance_tokens, cov_controlled_loss
- filters:    informative_groups, overlong_loss_mask, soft_overlong_penalty, group_upweight
- registry:   ADVANTAGES, POLICY_LOSSES (name -> function tables), register_advantage,
              register_policy_loss
"""

from .advantages import (
    SCALES,
    dr_grpo_advantages,
    group_advantages,
    grpo_advantages,
    reinforce_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    softmax_advantages,
)
from .correction import CORRECTION_LEVELS, CORRECTION_MODES, correction_weights, mismatch_stats
from .covariance import ENTROPY_CONTROLS, cov_controlled_loss, logp_adv_covariance, select_covariance_tokens
from .filters import group_upweight, informative_groups, overlong_loss_mask, soft_overlong_penalty
from .gae import (
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    last_token_index,
    masked_moments,
    token_rewards,
    value_moments,
    whiten,
)
from .kl import KL_ESTIMATORS, adaptive_kl_beta, kl_estimate, logprob_mismatch
from .logprobs import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy
from .loss import AGGREGATIONS, aggregate_loss, clipped_policy_loss, tis_weights
from .objectives import cispo_policy_loss, gspo_policy_loss, gspo_token_policy_loss, sequence_mean
from .registry import ADVANTAGES, POLICY_LOSSES, register_advantage, register_policy_loss

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CORRECTION_LEVELS",
    "CORRECTION_MODES",
    "ENTROPY_CONTROLS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "SCALES",
    "adaptive_kl_beta",
    "aggregate_loss",
    "cispo_policy_loss",
    "clipped_value_loss",
    "explained_variance",
    "gae_advantages",
    "last_token_index",
    "masked_moments",
    "token_rewards",
    "value_moments",
    "whiten",
    "clipped_policy_loss",
    "correction_weights",
    "cov_controlled_loss",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "group_advantages",
    "group_upweight",
    "gspo_policy_loss",
    "gspo_token_policy_loss",
    "grpo_advantages",
    "informative_groups",
    "kl_estimate",
    "logp_adv_covariance",
    "logprob_mismatch",
    "mismatch_stats",
    "overlong_loss_mask",
    "register_advantage",
    "register_policy_loss",
    "reinforce_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "select_covariance_tokens",
    "selective_log_softmax",
    "selective_log_softmax_and_entropy",
    "sequence_mean",
    "softmax_advantages",
    "soft_overlong_penalty",
    "tis_weights",
]
