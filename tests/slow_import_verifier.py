"""A verifier whose module takes 0.7 s to import, as a user's module pulling in a heavy
library does; test_rewards_hostile checks that a worker imports it before it is timed."""

import time

from grpo_trainer.rewards import VerifyResult, register_verifier

time.sleep(0.7)


@register_verifier("test_slow_import")
def sleeps_0_4s(completion, ground_truth, **kwargs):
    time.sleep(0.4)
    return VerifyResult(1.0 if completion == ground_truth else 0.0, completion, True)
