"""evaluate: the pass@k estimator, metric aggregation, model-path resolution, and one real run of
the CLI on a tiny random Llama with vLLM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_trainer.evaluate import (
    aggregate,
    check_verifier_specs,
    evaluate_model,
    format_table,
    main,
    pass_at_k,
    resolve_eval_model,
)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (2, 1, 1, 0.5),  # k=1 is c/n
        (8, 3, 1, 0.375),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 0, 2, 0.0),  # nothing correct
        (4, 3, 2, 1.0),  # n-c=1 < k: every draw of 2 holds a correct one
        (3, 1, 3, 1.0),  # n == k: 1 if any correct
        (3, 0, 3, 0.0),
        (100, 1, 10, 0.1),  # 1 - C(99,10)/C(100,10) = 1 - 90/100
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_codex_product_form():
    # The Codex paper computes 1 - prod_{i=n-c+1}^{n} (1 - k/i), the same ratio of binomials.
    n, c, k = 200, 37, 10
    product = math.prod(1 - k / i for i in range(n - c + 1, n + 1))
    assert pass_at_k(n, c, k) == pytest.approx(1 - product, rel=1e-12)
    assert pass_at_k(1000, 999, 1000) == 1.0  # huge binomials stay exact integers


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


def _rec(n, c, f=0, tokens=0, trunc=0):
    return {"num_samples": n, "num_correct": c, "num_formatted": f, "num_tokens": tokens, "num_truncated": trunc}


def test_aggregate_hand_values():
    records = [_rec(2, 1, 2, 10, 0), _rec(2, 0, 1, 20, 1), _rec(2, 2, 0, 30, 2)]
    m = aggregate(records, k=2)
    assert m["accuracy"] == pytest.approx(0.5)  # (1/2 + 0 + 2/2) / 3
    assert m["pass@k"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert m["format"] == pytest.approx(0.5)  # 3 of 6 samples
    assert m["mean_completion_tokens"] == pytest.approx(10.0)  # 60 tokens / 6 samples
    assert m["truncated"] == pytest.approx(0.5)  # 3 of 6
    with pytest.raises(ValueError, match="no problems"):
        aggregate([], k=1)


def test_verifier_must_judge_correctness():
    check_verifier_specs([{"name": "format"}, {"name": "gsm8k"}])
    with pytest.raises(ValueError, match="no correctness verifier"):
        check_verifier_specs([{"name": "format"}])
    with pytest.raises(ValueError, match="no correctness verifier"):
        check_verifier_specs([{"name": "tests.reward_fns:length_penalty"}])


def test_bad_sampling_settings_fail_before_any_engine():
    # tokenizer=None: the checks must come before prompts are rendered or an engine is built.
    with pytest.raises(ValueError, match="greedy decoding"):
        evaluate_model("unused", [], None, k=2, temperature=0.0)
    with pytest.raises(ValueError, match=r"need 1 <= k <= num_samples"):
        evaluate_model("unused", [], None, k=4, num_samples=2, temperature=1.0)


def _fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _fake_checkpoint(run: Path, name: str, complete: bool = True) -> Path:
    ckpt = run / name
    _fake_model(ckpt / "model")
    if complete:
        (ckpt / "COMPLETE").write_text("0\n")
    return ckpt


def test_resolve_run_dir_takes_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run, "checkpoint-9")
    _fake_checkpoint(run, "checkpoint-10")  # newest by number, though "checkpoint-9" sorts after it as text
    _fake_checkpoint(run, "checkpoint-11", complete=False)  # interrupted save: never chosen
    (run / "metrics.jsonl").write_text("")
    assert resolve_eval_model(str(run)) == (str(run / "checkpoint-10" / "model"), 10)


def test_resolve_checkpoint_and_model_dirs(tmp_path):
    run = tmp_path / "run"
    ckpt = _fake_checkpoint(run, "checkpoint-000012")
    assert resolve_eval_model(str(ckpt)) == (str(ckpt / "model"), 12)
    assert resolve_eval_model(str(ckpt / "model")) == (str(ckpt / "model"), None)
    hf = _fake_model(tmp_path / "hf")
    assert resolve_eval_model(str(hf)) == (str(hf), None)


def test_resolve_errors_name_the_problem(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run, "checkpoint-000003", complete=False)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_eval_model(str(run))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither an HF model directory"):
        resolve_eval_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="does not exist"):
        resolve_eval_model(str(tmp_path / "missing"))


def test_format_table_columns():
    row = {"model": "m", "step": 3, "n": 4, "k": 2, "num_samples": 4, "accuracy": 0.25, "pass@k": 0.5,
           "format": 1.0, "mean_completion_tokens": 12.0, "truncated": 0.0, "seconds": 7.0}
    lines = format_table([row]).splitlines()
    assert lines[0].split() == ["model", "step", "n", "avg@4", "pass@2", "format", "tokens", "trunc", "secs"]
    assert lines[2].split() == ["m", "3", "4", "0.2500", "0.5000", "1.000", "12.0", "0.000", "7"]
    greedy = dict(row, k=1, num_samples=1, step=None)
    lines = format_table([greedy]).splitlines()
    assert lines[0].split()[3] == "pass@1" and "pass@2" not in lines[0]
    assert lines[2].split()[1] == "-"


@pytest.mark.slow
def test_cli_end_to_end_tiny_llama(tiny_llama: Path, tmp_path: Path):
    from grpo_trainer.data import load_examples

    # The same weights twice: as an HF directory and as the newest checkpoint of a run directory.
    run = tmp_path / "run"
    (run / "checkpoint-000003").mkdir(parents=True)
    os.symlink(tiny_llama, run / "checkpoint-000003" / "model")
    (run / "checkpoint-000003" / "COMPLETE").write_text("3\n")
    out = tmp_path / "res.json"
    rng_before = torch.get_rng_state()
    rc = main(["--model", str(tiny_llama), str(run), "--num-examples", "4", "--k", "2", "--max-tokens", "12",
               "--kv-cache-gib", "1", "--output", str(out), "--save-completions"])
    assert rc == 0
    # The engines reseed torch's global generator; evaluate_model puts it back (the trainer relies on it).
    assert torch.equal(torch.get_rng_state(), rng_before)
    data = json.loads(out.read_text())
    assert data["config"]["temperature"] == 1.0  # k > 1 samples by default
    golds = [ex["gold"] for ex in load_examples("synthetic", "test", 4, 0, 1)]
    first, second = data["results"]
    assert (first["model"], first["step"], second["step"]) == (str(tiny_llama), None, 3)
    assert second["path"] == str(run / "checkpoint-000003" / "model")
    for res in data["results"]:
        assert res["n"] == 4 and res["k"] == 2 and res["num_samples"] == 2
        for key in ("accuracy", "pass@k", "format", "truncated"):
            assert 0.0 <= res[key] <= 1.0
        assert res["pass@k"] >= res["accuracy"]
        per = res["per_example"]
        assert [r["index"] for r in per] == [0, 1, 2, 3]
        assert [r["gold"] for r in per] == golds
        assert all(len(r["completions"]) == 2 and len(r["parsed"]) == 2 for r in per)
        assert res["accuracy"] == pytest.approx(sum(r["num_correct"] for r in per) / 8)
        assert res["mean_completion_tokens"] == pytest.approx(sum(r["num_tokens"] for r in per) / 8)
        assert 1 <= res["mean_completion_tokens"] <= 12
        assert not math.isnan(res["seconds"])
    # Same weights and seed: the second engine (started after the first was freed) samples the same text.
    assert [r["completions"] for r in first["per_example"]] == [r["completions"] for r in second["per_example"]]


GATHER_SCRIPT = """
import json, os, sys, time
from grpo_trainer.evaluate import _all_gather
rank = int(os.environ["RANK"])
got = []
for i in range(3):
    if rank == 1 and i:
        time.sleep(1.5)  # rank 0 reaches the next gather first, as after a faster shard
    got.append(_all_gather([rank, i]))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:  # one file each: no interleaving
    json.dump(got, fh)
"""


@pytest.mark.slow
def test_all_gather_survives_repeated_temporary_groups(tmp_path):
    # One temporary process group per model, each torn down again (as a closing vLLM engine does);
    # a group re-made on the same store keys would let rank 0 dial rank 1's stale address.
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Every rank holds, per round i, [rank, i] of each rank in rank order.
    expected = [[[0, i], [1, i]] for i in range(3)]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected
