"""evaluate: the pass@k estimator, metric aggregation with intervals, strict and flexible
extraction, settings taken from a run's config.yaml, paired comparisons, model-path resolution,
and one real run of the CLI on a tiny random Llama with vLLM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_trainer.config import load_config, save_config
from grpo_trainer.eval_report import compare, format_comparisons, format_table, write_results
from grpo_trainer.eval_settings import correctness_spec, resolve_settings, scoring_specs
from grpo_trainer.evaluate import (
    _score_chunk,
    aggregate,
    check_verifier_specs,
    evaluate_model,
    main,
    pass_at_k,
    resolve_eval_model,
)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_INSTRUCTION = 'Solve it step by step. On the last line write "####" and then the answer.'


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
    # Wilson over the 3 problems at p = 0.5: z^2/n = 1.28049, center 0.5,
    # half = 1.95996 sqrt(1/12 + 1.28049/12) / 2.28049 = 1.95996 * 0.43594 / 2.28049 = 0.37467
    assert m["accuracy_ci"] == pytest.approx([0.12533, 0.87467], abs=1e-5)
    assert m["by_extraction"] == {}
    with pytest.raises(ValueError, match="no problems"):
        aggregate([], k=1)


def test_aggregate_per_extraction():
    records = [dict(_rec(1, 1), correct_by={"strict": 1, "flexible": 1}),
               dict(_rec(1, 0), correct_by={"strict": 0, "flexible": 1}),
               dict(_rec(1, 0), correct_by={"strict": 0, "flexible": 0}),
               dict(_rec(1, 1), correct_by={"strict": 1, "flexible": 1})]
    m = aggregate(records, k=1)
    assert m["by_extraction"]["strict"]["accuracy"] == 0.5  # 2 of 4
    assert m["by_extraction"]["flexible"]["accuracy"] == 0.75  # 3 of 4
    assert m["by_extraction"]["strict"]["accuracy_ci"] == pytest.approx(m["accuracy_ci"])  # same counts


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


def _result(model, step, k=1, num_samples=1, **by):
    ext = {lab: {"accuracy": acc, "accuracy_ci": [acc - 0.1, acc + 0.1], "pass@k": pk, "pass@k_ci": [pk - 0.2, 1.0]}
           for lab, (acc, pk) in by.items()}
    return {"model": model, "step": step, "n": 4, "k": k, "num_samples": num_samples, "extraction": "flexible",
            "format": 1.0, "mean_completion_tokens": 12.0, "truncated": 0.0, "seconds": 7.0, "by_extraction": ext}


def test_format_table_columns():
    # flexible first in the result (the run's mode) but strict first in the table, for every run alike.
    row = _result("m", 3, k=2, num_samples=4, flexible=(0.5, 0.75), strict=(0.25, 0.5))
    lines = format_table([row]).splitlines()
    assert [c.strip() for c in lines[0].split("  ") if c.strip()] == [
        "model", "step", "n", "avg@4 strict", "pass@2 strict", "avg@4 flexible", "pass@2 flexible",
        "format", "tokens", "trunc", "secs"]
    assert lines[2].split() == ["m", "3", "4", "0.250", "[0.150,", "0.350]", "0.500", "[0.300,", "1.000]",
                                "0.500", "[0.400,", "0.600]", "0.750", "[0.550,", "1.000]",
                                "1.000", "12.0", "0.000", "7"]
    assert "'accuracy' in the JSON: flexible" in lines[-1]
    greedy = _result("m", None, math=(0.5, 0.5))
    lines = format_table([greedy]).splitlines()
    assert lines[0].split()[3:5] == ["pass@1", "math"] and "pass@2" not in lines[0]
    assert lines[2].split()[1] == "-"


def _scored(model, correct_by: list[dict], num_samples=1, drop=()):
    per = [{"index": i, "num_samples": num_samples, "correct_by": c} for i, c in enumerate(correct_by) if i not in drop]
    return {"model": model, "by_extraction": dict.fromkeys(correct_by[0]), "per_example": per}


def test_compare_pairs_problems_by_index():
    base = _scored("base", [{"strict": s, "flexible": f} for s, f in [(0, 0), (0, 1), (1, 1), (0, 0), (0, 0)]])
    tuned = _scored("tuned", [{"strict": s, "flexible": f} for s, f in [(1, 1), (1, 1), (0, 1), (1, 1), (0, 0)]],
                    drop=(4,))  # its tokenizer dropped problem 4 as too long: compared on 0-3
    strict, flexible = compare([base, tuned])
    assert (strict["baseline"], strict["model"], strict["extraction"]) == ("base", "tuned", "strict")
    # strict, problems 0-3: base 0,0,1,0  tuned 1,1,0,1 -> gained 3 (0, 1, 3), lost 1 (2)
    assert (strict["n"], strict["gained"], strict["lost"]) == (4, 3, 1)
    assert strict["p_value"] == pytest.approx(2 * (1 + 4) / 16)  # 2 (C(4,0) + C(4,1)) / 2^4 = 0.625
    # flexible: base 0,1,1,0  tuned 1,1,1,1 -> gained 2, lost 0: p = 2 / 2^2 = 0.5
    assert (flexible["first"], flexible["second"], flexible["gained"], flexible["lost"]) == (0.5, 1.0, 2, 0)
    assert flexible["p_value"] == 0.5
    assert compare([base]) == []


def test_results_file_is_rewritten_whole_after_each_model(tmp_path):
    # evaluate writes after every model, so a run killed during the third keeps the first two.
    base = _scored("base", [{"strict": s, "flexible": f} for s, f in [(0, 0), (0, 1), (1, 1), (0, 0)]])
    tuned = _scored("tuned", [{"strict": 1, "flexible": 1}] * 4)
    out = tmp_path / "sub" / "res.json"
    assert write_results(out, {"data": "x"}, [base]) == []
    assert json.loads(out.read_text()) == {"config": {"data": "x"}, "results": [base], "comparisons": []}
    comparisons = write_results(out, {"data": "x"}, [base, tuned])
    assert json.loads(out.read_text())["comparisons"] == comparisons == compare([base, tuned])
    assert [(c["gained"], c["lost"]) for c in comparisons] == [(3, 0), (2, 0)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.json"]  # no temporary file left


def test_comparison_line_says_whether_it_is_noise():
    noise = {"model": "b", "baseline": "a", "extraction": "flexible", "n": 200, "first": 0.02, "second": 0.025,
             "gained": 3, "lost": 2, "p_value": 1.0, "test": "exact McNemar"}
    line = format_comparisons([noise])
    assert line == ("b vs a (flexible, 200 paired problems): 0.020 -> 0.025 (+0.005); better on 3, worse on 2; "
                    "exact McNemar p = 1, not significant at the 5% level: the difference is within noise")
    real = dict(noise, second=0.12, gained=25, lost=5, p_value=0.00033)
    assert format_comparisons([real]).endswith("p = 0.00033, significant at the 5% level")


def test_strict_and_flexible_are_scored_on_the_same_completions():
    from grpo_trainer.models import load_tokenizer, resolve_model_path
    from grpo_trainer.rewards import build_reward_fn
    from grpo_trainer.rollout.base import RolloutBatch

    tok = load_tokenizer(resolve_model_path("smollm2-135m-instruct"))
    kept = [{"answer": "6 + 7 = 13\n#### 13", "gold": "13"}, {"answer": "#### 5", "gold": "5"}]
    texts = [  # 2 problems x G=2, group-major
        "6 + 7 = 13\n#### 13",  # strict and flexible right
        "so the answer is 13.",  # no '####': strict wrong, flexible right
        "#### 5\nno wait, 6",  # a number after '####': strict finds no answer, flexible reads 6: both wrong
        "5 apples, #### 4",  # strict reads 4 (wrong), flexible 4 (wrong)
    ]
    batch = RolloutBatch(prompt_ids=[[1], [1]], completion_ids=[tok.encode(t, add_special_tokens=False) for t in texts],
                         logprobs=[[] for _ in texts], truncated=[False, False, False, True])
    specs, labels = scoring_specs([{"name": "gsm8k", "kwargs": {"mode": "flexible"}}])
    assert labels == ["flexible", "strict"]
    with build_reward_fn(specs) as rc:
        records = _score_chunk([0, 1], kept, [0, 1], ["q0", "q1"], batch, tok, rc, labels, save_completions=True)
    assert [r["completions"] for r in records] == [texts[:2], texts[2:]]  # decoding gave the texts back
    assert [r["correct_by"] for r in records] == [{"flexible": 2, "strict": 1}, {"flexible": 0, "strict": 0}]
    assert [r["num_correct"] for r in records] == [2, 0]  # the primary (flexible) decides num_correct
    m = aggregate(records, k=1)
    assert (m["accuracy"], m["by_extraction"]["strict"]["accuracy"]) == (0.5, 0.25)  # (1 + 0)/2; (1/2 + 0)/2
    assert m["truncated"] == 0.25


def test_scoring_specs():
    specs, labels = scoring_specs([{"name": "gsm8k"}])  # default mode: strict
    assert labels == ["strict", "flexible"]
    assert [s["kwargs"]["mode"] for s in specs] == ["strict", "flexible"]
    specs, labels = scoring_specs([{"name": "format"}, {"name": "math", "weight": 1.0}])
    assert labels == ["math"] and [s["name"] for s in specs] == ["math", "format"]  # correctness first


def test_correctness_spec_matches_the_trainer_rule():
    flexible = {"name": "gsm8k", "weight": 1.0, "kwargs": {"mode": "flexible"}}
    assert correctness_spec([{"name": "format"}, flexible]) == flexible
    assert correctness_spec([{"name": "format"}])["kwargs"] == {"mode": "strict"}


def _run_dir(root: Path, name: str, recipe: str = "recipes/quickstart.yaml", overrides=()) -> Path:
    run = root / name
    ckpt = _fake_checkpoint(run, "checkpoint-000020")
    save_config(load_config(REPO / recipe, list(overrides)), run / "config.yaml")
    return ckpt


NONE_GIVEN = dict.fromkeys(["instruction", "system_prompt", "verifier", "verifier_kwargs", "dtype"])


def test_settings_come_from_the_run_config(tmp_path):
    # README's before/after: the base model (an alias) and the quickstart run, with no flag: both are
    # evaluated with the quickstart's instruction, flexible gsm8k and bf16 engine.
    ckpt = _run_dir(tmp_path, "quick")
    want = {"instruction": QUICKSTART_INSTRUCTION, "system_prompt": None, "verifier": "gsm8k",
            "verifier_kwargs": {"mode": "flexible"}, "dtype": "bfloat16"}
    for spec in (ckpt.parent, ckpt, ckpt / "model"):  # run dir, checkpoint dir, checkpoint's model/
        settings, source = resolve_settings(NONE_GIVEN, ["smollm2-135m-instruct", str(spec)])
        assert settings == want
        assert set(source.values()) == {str(ckpt.parent / "config.yaml")}
    # A flag wins; --verifier alone does not inherit the run's kwargs (they may not fit it).
    settings, source = resolve_settings({**NONE_GIVEN, "dtype": "float32", "verifier": "math"}, [str(ckpt.parent)])
    assert (settings["dtype"], settings["verifier"], settings["verifier_kwargs"]) == ("float32", "math", {})
    assert (source["dtype"], source["instruction"]) == ("flag", str(ckpt.parent / "config.yaml"))
    settings, _ = resolve_settings({**NONE_GIVEN, "verifier_kwargs": {"mode": "strict"}}, [str(ckpt.parent)])
    assert (settings["verifier"], settings["verifier_kwargs"]) == ("gsm8k", {"mode": "strict"})
    # No run among the models: the trainer's defaults.
    settings, source = resolve_settings(NONE_GIVEN, ["smollm2-135m-instruct", str(_fake_model(tmp_path / "hf"))])
    assert settings == {"instruction": None, "system_prompt": None, "verifier": "gsm8k", "verifier_kwargs": {},
                        "dtype": "float32"}
    assert set(source.values()) == {"default"}


def test_runs_that_disagree_need_a_flag(tmp_path, capsys):
    a = _run_dir(tmp_path, "a").parent
    b = _run_dir(tmp_path, "b", overrides=["rollout.dtype=float32"]).parent
    with pytest.raises(ValueError, match=r"differ in dtype \('bfloat16' vs 'float32'\); pass --dtype"):
        resolve_settings(NONE_GIVEN, [str(a), str(b)])
    settings, _ = resolve_settings({**NONE_GIVEN, "dtype": "bfloat16"}, [str(a), str(b)])
    assert settings["verifier_kwargs"] == {"mode": "flexible"}  # the rest agree
    # The CLI says it in one line, exit 2, before any data or model loads.
    assert main(["--model", str(a), str(b), "--output", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pass --dtype" in err[0]
    assert not (tmp_path / "out.json").exists()


def test_num_examples_default_and_all(capsys):
    from grpo_trainer.evaluate import DEFAULT_NUM_EXAMPLES, parse_args
    from grpo_trainer.stats import wilson_interval

    assert parse_args(["--model", "m"]).num_examples == DEFAULT_NUM_EXAMPLES == 400
    lo, hi = wilson_interval(0.5, DEFAULT_NUM_EXAMPLES)  # the widest interval the default can give
    assert (hi - lo) / 2 < 0.05
    assert parse_args(["--model", "m", "--num-examples", "all"]).num_examples is None  # load_examples: every row
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--num-examples", "0"])
    assert "not a positive number of problems or 'all'" in capsys.readouterr().err


def test_all_gsm8k_test_problems_from_a_local_file():
    path = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip("no ../shared/data/gsm8k/test.jsonl beside the project")
    from grpo_trainer.data import load_examples

    examples = load_examples(str(path), "test", None, 0, 1)  # what --num-examples all passes
    assert len(examples) == 1319
    assert examples[0]["gold"] == "18"  # Janet's ducks: (16 - 3 - 4) * 2


@pytest.mark.slow
def test_cli_end_to_end_tiny_llama(tiny_llama: Path, tmp_path: Path):
    from grpo_trainer.data import load_examples

    # The same weights twice: as an HF directory and as the newest checkpoint of a run directory.
    run = tmp_path / "run"
    (run / "checkpoint-000003").mkdir(parents=True)
    os.symlink(tiny_llama, run / "checkpoint-000003" / "model")
    (run / "checkpoint-000003" / "COMPLETE").write_text("3\n")
    # The run was trained by the quickstart recipe: its instruction, flexible gsm8k and bf16 engine
    # apply to both models, with no flag.
    save_config(load_config(REPO / "recipes" / "quickstart.yaml"), run / "config.yaml")
    out = tmp_path / "res.json"
    rng_before = torch.get_rng_state()
    rc = main(["--model", str(tiny_llama), str(run), "--num-examples", "4", "--k", "2", "--max-tokens", "12",
               "--kv-cache-gib", "1", "--output", str(out), "--save-completions"])
    assert rc == 0
    # The engines reseed torch's global generator; evaluate_model puts it back (the trainer relies on it).
    assert torch.equal(torch.get_rng_state(), rng_before)
    data = json.loads(out.read_text())
    assert data["config"]["temperature"] == 1.0  # k > 1 samples by default
    config = data["config"]
    assert (config["instruction"], config["verifier"], config["verifier_kwargs"], config["dtype"]) == (
        QUICKSTART_INSTRUCTION, "gsm8k", {"mode": "flexible"}, "bfloat16")
    assert config["settings_from"]["dtype"] == str(run / "config.yaml")
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
        assert res["extraction"] == "flexible" and set(res["by_extraction"]) == {"strict", "flexible"}
        assert [r["correct_by"]["flexible"] for r in per] == [r["num_correct"] for r in per]
        assert all(0 <= r["correct_by"]["strict"] <= 2 for r in per)
        lo, hi = res["accuracy_ci"]
        assert lo <= res["accuracy"] <= hi and hi - lo > 0.3  # 4 problems: a wide interval
        assert res["mean_completion_tokens"] == pytest.approx(sum(r["num_tokens"] for r in per) / 8)
        assert 1 <= res["mean_completion_tokens"] <= 12
        assert not math.isnan(res["seconds"])
    # Same weights and seed: the second engine (started after the first was freed) samples the same text.
    assert [r["completions"] for r in first["per_example"]] == [r["completions"] for r in second["per_example"]]
    # ... so the paired test finds no problem on which either is better, in either extraction.
    assert [(c["extraction"], c["n"], c["gained"], c["lost"], c["p_value"]) for c in data["comparisons"]] == [
        ("strict", 4, 0, 0, 1.0), ("flexible", 4, 0, 0, 1.0)]


GATHER_SCRIPT = """
import json, os, sys, time
from grpo_trainer.rollout.vllm_env import gather_objects
rank = int(os.environ["RANK"])
got = []
for i in range(3):
    if rank == 1 and i:
        time.sleep(1.5)  # rank 0 reaches the next gather first, as after a faster shard
    got.append(gather_objects([rank, i], rank, 2))
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
