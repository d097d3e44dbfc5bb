"""Run by tests/test_bad_input.py under `accelerate launch` with 2 processes: each process sees
different reward scores, and the RewardGuard must still reach the same verdict on both, or one
process would stop while the other waits in its next collective.

    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml tests/reward_guard_ranks.py"""

from __future__ import annotations

import json
import math

from grpo_trainer.distributed import make_accelerator
from grpo_trainer.rewards import RewardError
from grpo_trainer.reward_guard import RewardGuard

acc = make_accelerator("no", 1, 1.0)
guard = RewardGuard(2)
nan = math.nan
# Step 1: only process 1 has a finite score, so the step has signal everywhere (alone, process 0
# would count it as silent); steps 2 and 3: no finite score anywhere.
steps = [{"fn": [nan, nan] if acc.process_index == 0 else [nan, 0.5]}, {"fn": [nan, math.inf]}, {"fn": [nan, nan]}]
seen, stopped = [], None
for step, scores in enumerate(steps, 1):
    guard.observe(acc, scores, step)
    seen.append(guard.consecutive)
    try:
        guard.raise_if_exhausted(step)
    except RewardError:
        stopped = step
        break
print(json.dumps({"rank": acc.process_index, "consecutive": seen, "stopped": stopped}), flush=True)
