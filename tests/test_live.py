"""trainer.report_to: TensorBoard event files and a wandb offline run written while training, read
back and compared with metrics.jsonl; the per-token sample log of a real tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from grpo_trainer.config import ConfigError, load_config
from grpo_trainer.metrics import MetricsLogger

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("tensorboard")
wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    monkeypatch.setenv("WANDB_SILENT", "true")


def _tensorboard(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _wandb(run: Path) -> dict[int, dict]:
    from wandb_offline import history, run_file

    return history(run_file(run))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logger_writes_tensorboard_and_wandb_as_it_logs(tmp_path):
    run = tmp_path / "run"
    logger = MetricsLogger(run, True, max_steps=3, report_to=["tensorboard", "wandb"], config={"seed": 1})
    logger.begin(0)
    rows = [{"reward/mean": 0.25, "train/kl": None, "train/entropy": 1.5},
            {"reward/mean": 0.5, "train/kl": 0.125, "train/entropy": math.nan},  # NaN: not measured
            {"reward/mean": 0.75, "train/kl": 0.0625, "train/entropy": 1.25}]
    for step, row in enumerate(rows, start=1):
        logger.log(step, row)
        if step == 2:
            # Read back while the run is live: step 2 is already on disk for TensorBoard.
            assert _tensorboard(run)["reward/mean"] == {1: 0.25, 2: 0.5}
    logger.log_samples(3, [{"question": "q", "completion": "c <b>", "reward": 1.0, "advantage": 0.5,
                            "parsed": "4", "gold": "4", "components": {"gsm8k": 1.0, "format": None}}])
    logger.close()
    logged = _jsonl(run / "metrics.jsonl")
    tb, wb = _tensorboard(run), _wandb(run)
    for key in ("reward/mean", "train/kl", "train/entropy"):
        want = {r["step"]: r[key] for r in logged if r[key] is not None}
        assert tb[key] == want, key  # all dyadic: exact in TensorBoard's float32
        assert {s: wb[s][key] for s in wb if key in wb[s]} == want, key
    assert 1 not in tb["train/kl"] and 2 not in tb["train/entropy"]  # null: no point, not a 0
    assert wb[3]["samples/nrows"] == 1 and wb[3]["samples/ncols"] == 8  # step + 7 sample columns
    table = json.loads(next((run / "wandb").glob("offline-run-*/files/media/table/samples_3_*.json")).read_text())
    assert table["data"][0][:3] == [3, "q", "c <b>"]
    assert table["data"][0][-1] == "gsm8k=1.0, format=None"


def test_report_to_names_and_packages_are_checked_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^trainer.report_to=\['tensorbord'\] names 'tensorbord': expected a "
                                          r"list of 'tensorboard', 'wandb' \(or \[\] for neither\)$"):
        load_config(None, ["trainer.report_to=[tensorbord]"])
    import importlib.util

    from grpo_trainer.preflight import check_report_to

    cfg = load_config(None, [f"trainer.output_dir={tmp_path / 'run'}", "trainer.report_to=[tensorboard, wandb]"])
    check_report_to(cfg)  # both installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^trainer.report_to lists 'wandb' but the wandb package is not "
                                          r"installed: pip install 'grpo_trainer\[wandb\]'"):
        check_report_to(cfg)


def test_tiny_run_reports_live_and_logs_per_token_samples(tiny_llama, tmp_path):
    from grpo_trainer.inspect import main as inspect_main
    from grpo_trainer.trainer import GRPOTrainer

    run = tmp_path / "run"
    cfg = load_config(None, [
        f"model.name_or_path={tiny_llama}", f"trainer.output_dir={run}", "rollout.backend=hf",
        "rollout.num_generations=4", "rollout.max_completion_length=8", "trainer.prompts_per_step=2",
        "trainer.max_steps=3", "data.num_examples=32", "trainer.learning_rate=1e-3", "rollout.dtype=null",
        "trainer.log_samples_every=2", "trainer.num_log_samples=4", "trainer.report_to=[tensorboard, wandb]",
        "reward.functions=[{name: 'tests.reward_fns:even_token_fraction', label: even}, {name: gsm8k, weight: 0.0}]"])
    trainer = GRPOTrainer(cfg)
    trainer.train()
    logged = _jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3]
    # beta = 0, one pass, no TIS: these do not exist in this run, and say so.
    assert all(r["train/kl"] is None and r["train/kl_old_new"] is None and r["train/tis_weight_mean"] is None
               for r in logged)
    tb, wb = _tensorboard(run), _wandb(run)
    assert "train/kl" not in tb and all("train/kl" not in row for row in wb.values())
    for key in ("reward/mean", "completion/len_mean", "train/loss", "train/entropy", "train/grad_norm"):
        want = {r["step"]: r[key] for r in logged}
        assert tb[key] == pytest.approx(want, rel=1e-6), key  # float32 in the event file
        assert {s: wb[s][key] for s in (1, 2, 3)} == want, key  # JSON doubles: exact

    samples = _jsonl(run / "samples.jsonl")
    # Every 2 steps, and the last step although 2 does not divide 3.
    assert [s["step"] for s in samples] == [2] * 4 + [3] * 4
    trained = 0
    for s in samples:
        n = len(s["tokens"])
        assert n == len(s["engine_logp"]) == len(s["token_advantages"]) == len(s["loss_mask"]) > 0
        assert set(s["components"]) == {"even", "gsm8k"} and s["components"]["gsm8k"] == 0.0
        assert s["reward"] == pytest.approx(s["components"]["even"])
        assert "parsed" in s and s["correct"] is False and all(s["loss_mask"])
        assert all(a == s["advantage"] for a in s["token_advantages"])  # sequence-level, broadcast
        if s["advantage"] == 0:  # not forwarded (zero-advantage rows are skipped): nothing measured
            assert s["trainer_logp"] is None and s["entropy"] is None
            continue
        trained += 1
        # The fp32 HF engine and the trainer, on the same weights: two computations of one number.
        assert max(abs(e - t) for e, t in zip(s["engine_logp"], s["trainer_logp"])) < 1e-4
        assert all(0 < h < math.log(trainer.tokenizer.vocab_size + 1) for h in s["entropy"])
        assert s["clipped"] == [False] * n  # one update per batch: the ratio is 1
    assert trained >= 4  # even_token_fraction varies within groups
    assert inspect_main([str(run)]) == 0
    page = (run / "inspect.html").read_text()
    assert '"initial": 3' in page and '"2": [' in page and "http" not in page
