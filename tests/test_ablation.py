"""scripts/ablation.py: the DAPO ladder's runs, their held-out results and the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import ablation  # noqa: E402


def overrides(run: dict) -> dict:
    """The run's dotted overrides, their values read as the trainer's config reads them."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in run["argv"][2:])}


def test_each_rung_adds_one_technique_to_the_one_above():
    args = ablation.parse_args(["--seeds", "2", "--extra", "gspo", "ppo", "--out", "/x"])
    runs = ablation.plan(args)
    assert len(runs) == 2 * 8
    seed0 = [overrides(r) for r in runs if r["seed"] == 0]
    assert [r["slug"] for r in runs[:8]] == ["naive", "overlong_filter", "clip_higher", "soft_overlong",
                                            "token_loss", "dynamic_sampling", "gspo", "ppo"]
    naive, filt, clip, soft, token, dapo, gspo, ppo = seed0
    keys = {"algorithm.loss_agg": "seq_mean_token_mean", "algorithm.eps_high": 0.2,
            "algorithm.overlong_filter": False, "algorithm.overlong_penalty": False,
            "algorithm.dynamic_sampling": "off"}
    assert {k: naive[k] for k in keys} == keys

    def changed(a, b):
        return {k: b[k] for k in b if k not in a or a[k] != b[k] and k != "trainer.output_dir"}

    assert changed(naive, filt) == {"algorithm.overlong_filter": True}
    assert changed(filt, clip) == {"algorithm.eps_high": 0.28}
    assert changed(clip, soft) == {"algorithm.overlong_penalty": True}
    assert changed(soft, token) == {"algorithm.loss_agg": "token_mean"}
    assert changed(token, dapo) == {"algorithm.dynamic_sampling": "refill"}
    assert changed(dapo, gspo) == {"algorithm.policy_loss": "gspo", "algorithm.loss_agg": "seq_mean_token_mean"}
    assert changed(dapo, ppo) == {"algorithm.advantage": "gae", "algorithm.scale": None,
                                  "algorithm.dynamic_sampling": "off", "critic.enabled": True,
                                  "critic.learning_rate": 5e-05}
    # Off-policy updates in every rung (else the clip range never acts); the same held-out problems
    # (data.seed untouched) and budget everywhere; seeds differ only in the sampling seed.
    for run in runs:
        o = overrides(run)
        assert o["algorithm.num_mini_batches"] == 4 and o["trainer.eval_examples"] == 128
        assert o["trainer.max_steps"] == o["trainer.eval_every"] == 8 and "data.seed" not in o
        assert o["rollout.seed"] == run["seed"]
    assert changed(seed0[0], overrides(runs[8])) == {"rollout.seed": 1}


def fake_run(run: Path, greedy: list[int], sampled: list[tuple[int, int]], step: int = 1) -> None:
    """What the trainer writes (metrics.jsonl, eval/step-N.json), hand-made: the test is about the table."""
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "time/step": 10.0, "reward/mean": 0.1}) + "\n")
    (run / "wall_seconds").write_text("60\n")

    def result(correct, n):
        return {"accuracy": sum(c / n for c in correct) / len(correct),
                "per_example": [{"index": i, "num_samples": n, "num_correct": c} for i, c in enumerate(correct)]}

    (run / "eval" / f"step-{step:06d}.json").write_text(json.dumps(
        {"step": step, "results": [result(greedy, 1), result([c for c, _ in sampled], sampled[0][1])]}))


def test_the_table_pools_seeds_and_pairs_problems(tmp_path):
    # naive: seed 0 right on problems 0, 1; seed 1 on problem 0. The filter rung: seed 0 on 0, 1, 2;
    # seed 1 on 1, 2, 3. Pairs (problem, seed): the filter rung gained (2,0), (1,1), (2,1), (3,1), lost (0,1).
    fake_run(tmp_path / "naive" / "seed0", [1, 1, 0, 0], [(2, 2), (1, 2), (0, 2), (0, 2)])
    fake_run(tmp_path / "naive" / "seed1", [1, 0, 0, 0], [(1, 2), (0, 2), (0, 2), (0, 2)])
    fake_run(tmp_path / "overlong_filter" / "seed0", [1, 1, 1, 0], [(2, 2), (1, 2), (1, 2), (0, 2)])
    fake_run(tmp_path / "overlong_filter" / "seed1", [0, 1, 1, 1], [(1, 2), (1, 2), (1, 2), (1, 2)])
    # The untrained model, scored once: right on problem 1 only; paired with naive under each seed:
    # naive gained (0,0), (0,1) and lost (1,1).
    fake_run(tmp_path / "base", [0, 1, 0, 0], [(0, 2), (1, 2), (0, 2), (0, 2)], step=0)
    assert ablation.main(["--seeds", "2", "--steps", "1", "--rungs", "naive", "overlong_filter",
                          "--eval-samples", "2", "--out", str(tmp_path), "--report-only"]) == 0
    table = json.loads((tmp_path / "ladder.json").read_text())["table"]
    base, naive, filt = table
    assert base["label"] == "untrained model" and base["greedy"]["accuracy"] == 0.25 and base["greedy"]["n"] == 8
    vs_base = naive["greedy"]["vs_previous"]
    assert (vs_base["gained"], vs_base["lost"]) == (2, 1) and "vs_naive" not in naive["greedy"]
    assert naive["greedy"]["accuracy"] == 3 / 8 and naive["greedy"]["n"] == 8
    assert naive["greedy"]["per_seed"] == [0.5, 0.25]
    assert filt["greedy"]["accuracy"] == 6 / 8
    assert filt["sampled"]["accuracy"] == pytest.approx((1 + 0.5 + 0.5 + 0 + 0.5 * 4) / 8)
    vs = filt["greedy"]["vs_previous"]
    assert (vs["gained"], vs["lost"]) == (4, 1)
    assert vs["p_value"] == pytest.approx(2 * (1 + 5) / 2**5)  # exact two-sided binomial, b=4, c=1
    assert filt["greedy"]["vs_naive"] == vs
    lo, hi = filt["greedy"]["ci"]
    assert lo < 0.75 < hi and 0 < lo and hi < 1
    md = (tmp_path / "ladder.md").read_text()
    assert "| + overlong filtering | 36 | 0.750 [" in md and "4/1, p=0.38" in md
    assert (tmp_path / "ladder.png").stat().st_size > 0
    wait = ablation.main(["--seeds", "3", "--steps", "1", "--rungs", "naive", "--out", str(tmp_path), "--report-only"])
    assert wait == 2  # seed 2 never ran


def test_extra_rows_with_fewer_seeds_pair_with_dapo_on_the_seeds_they_share(tmp_path):
    runs = ablation.plan(ablation.parse_args(["--seeds", "2", "--extra", "gspo", "cispo", "--extra-seeds", "1",
                                              "--out", "/x"]))
    assert [(r["slug"], r["seed"]) for r in runs if r["slug"] in ("gspo", "cispo")] == [("gspo", 0), ("cispo", 0)]
    assert len(runs) == 6 * 2 + 2
    with pytest.raises(SystemExit):
        ablation.parse_args(["--seeds", "2", "--extra-seeds", "3"])
    # DAPO right on problems 0, 1 (seed 0) and 2, 3 (seed 1); GSPO (seed 0 only) right on 1, 2, 3: against
    # DAPO's seed 0 it gained problems 2 and 3 and lost problem 0. Seed 1 of DAPO has no pair.
    fake_run(tmp_path / "dynamic_sampling" / "seed0", [1, 1, 0, 0], [(1, 2)] * 4)
    fake_run(tmp_path / "dynamic_sampling" / "seed1", [0, 0, 1, 1], [(1, 2)] * 4)
    fake_run(tmp_path / "gspo" / "seed0", [0, 1, 1, 1], [(2, 2)] * 4)
    assert ablation.main(["--seeds", "2", "--steps", "1", "--rungs", "dynamic_sampling", "--extra", "gspo",
                          "--extra-seeds", "1", "--eval-samples", "2", "--out", str(tmp_path), "--no-base",
                          "--report-only"]) == 0
    dapo, gspo = json.loads((tmp_path / "ladder.json").read_text())["table"]
    assert dapo["greedy"]["n"] == 8 and gspo["greedy"]["n"] == 4 and gspo["greedy"]["per_seed"] == [0.75]
    vs = gspo["greedy"]["vs_previous"]
    assert (vs["n"], vs["gained"], vs["lost"]) == (4, 2, 1)
    assert gspo["sampled"]["vs_previous"]["n"] == 4
    assert "2 seeds (1 for the extra rows, paired on the seeds they share)" in (tmp_path / "ladder.md").read_text()
    # Greedy only (--eval-samples 0): no avg@n column, every row as wide as the header.
    assert ablation.main(["--seeds", "2", "--steps", "1", "--rungs", "dynamic_sampling", "--extra", "gspo",
                          "--extra-seeds", "1", "--eval-samples", "0", "--out", str(tmp_path), "--no-base",
                          "--report-only"]) == 0
    rows = [line for line in (tmp_path / "ladder.md").read_text().splitlines() if line.startswith("|")]
    assert "avg@2" not in rows[0] and {line.count("|") for line in rows} == {8}


def test_the_untrained_model_is_scored_as_the_trainer_scores_each_run():
    args = ablation.parse_args(["--difficulty", "2", "--max-tokens", "80", "--eval-examples", "50",
                                "--eval-samples", "3", "--out", "/x", "--set", "rollout.temperature=0.9"])
    greedy, sampled = ablation.base_commands(args, ablation.plan(args)[0])
    flags = dict(zip(greedy[::2], greedy[1::2]))
    assert flags == {"--model": "smollm2-135m-instruct", "--data": "synthetic", "--difficulty": "2",
                     "--num-examples": "50", "--seed": "0", "--max-tokens": "80", "--max-prompt-length": "256",
                     "--verifier": "gsm8k", "--verifier-kwargs": '{"mode": "flexible"}',
                     "--instruction": 'Solve it step by step. On the last line write "####" and then the answer.',
                     "--dtype": "bfloat16", "--output": "/x/base/greedy.json"}
    assert sampled == [*greedy[:-2], "--k", "1", "--num-samples", "3", "--temperature", "0.9", "--output",
                       "/x/base/sampled.json"]


@pytest.mark.slow
def test_two_rungs_train_and_evaluate_on_a_tiny_model(tiny_llama, tmp_path):
    """The script end to end: real trainer runs (hf backend, tiny random model), the trainer's held-out
    result files, then the table; a second call finds every result and trains nothing."""
    out = tmp_path / "ladder"
    argv = ["--model", str(tiny_llama), "--out", str(out), "--steps", "2", "--seeds", "1", "--rungs", "naive",
            "clip_higher", "--prompts-per-step", "2", "--generations", "4", "--max-tokens", "8",
            "--mini-batches", "2", "--eval-examples", "4", "--eval-samples", "2", "--no-base",
            "--set", "rollout.backend=hf", "rollout.dtype=null", "trainer.mixed_precision='no'",
            "data.num_examples=64", "trainer.torch_threads=1", "reward.num_workers=1", "trainer.micro_batch_size=8"]
    assert ablation.main(argv) == 0
    for slug in ("naive", "clip_higher"):
        run = out / slug / "seed0"
        results = json.loads((run / "eval" / "step-000002.json").read_text())["results"]
        assert [r["num_samples"] for r in results] == [1, 2] and [r["n"] for r in results] == [4, 4]
        assert not list(run.glob("checkpoint-*"))  # deleted once evaluated
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["eval/accuracy"] == results[0]["accuracy"]
        assert metrics[-1]["eval/avg_accuracy"] == results[1]["accuracy"]
    config = (out / "clip_higher" / "seed0" / "config.yaml").read_text()
    assert "eps_high: 0.28" in config and "num_mini_batches: 2" in config
    mtime = (out / "naive" / "seed0" / "metrics.jsonl").stat().st_mtime
    assert ablation.main(argv) == 0
    assert (out / "naive" / "seed0" / "metrics.jsonl").stat().st_mtime == mtime
    assert "| + clip-higher | 38 |" in (out / "ladder.md").read_text()
