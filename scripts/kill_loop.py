"""Run the random-SIGKILL crash test many times with different seeds (not part of CI).

    python scripts/kill_loop.py [--runs 50] [--first-seed 1]

Each run is `tests/test_resume.py::test_sigkill_at_random_moments_and_mid_save` with
GRPO_TRAINER_KILL_SEED set: a fresh reference run, then kills at the deterministic save/prune
points and at random moments, each followed by a check that every listed checkpoint matches its
manifest, and finished runs compared bit for bit with the reference. Prints one line per run and a
summary; exits 1 if any run failed (its log is kept under --logs).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_resume.py::test_sigkill_at_random_moments_and_mid_save"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--logs", default="runs/kill_loop", help="where failed runs' logs go")
    args = p.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    failed, kills, finished = [], 0, 0
    started = time.monotonic()
    for i in range(args.runs):
        seed = args.first_seed + i
        env = {**os.environ, "GRPO_TRAINER_KILL_SEED": str(seed)}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"],
                              cwd=REPO, env=env, capture_output=True, text=True)
        m = re.search(r"(\d+) kills landed, (\d+) runs finished", proc.stdout)
        if m:
            kills, finished = kills + int(m.group(1)), finished + int(m.group(2))
        ok = proc.returncode == 0
        if not ok:
            failed.append(seed)
            (logs / f"seed{seed}.log").write_text(proc.stdout + proc.stderr)
        print(f"run {i + 1}/{args.runs} seed {seed}: {'passed' if ok else 'FAILED'} "
              f"({m.group(0) if m else 'no summary'}; {time.monotonic() - t0:.0f} s)", flush=True)
    print(f"{args.runs - len(failed)} passed, {len(failed)} failed; {kills} kills landed, {finished} runs "
          f"finished and matched the reference; {time.monotonic() - started:.0f} s"
          + (f"; failed seeds {failed} (logs in {logs})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
