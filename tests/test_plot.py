"""plot: metrics.jsonl -> PNGs (real matplotlib, Agg) and TensorBoard events."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from grpo_trainer.plot import PlotError, export_tensorboard, load_metrics, main, plot_run, series

needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="matplotlib (extra `plot`) not installed")

ALL_PNGS = {"reward.png", "completion_length.png", "kl.png", "entropy.png", "clip_fraction.png", "mismatch.png",
            "time.png"}


def _row(step: int) -> dict:
    return {
        "step": step, "reward/mean": 0.1 * step, "reward/accuracy": 0.05 * step, "reward/format": 0.5,
        "completion/len_mean": 100.0 - step, "completion/len_max": 128,
        "train/kl": None if step == 1 else 0.01 * step,  # null: not measured at that step
        "train/entropy": 1.5, "train/clip_frac_low": 0.01, "train/clip_frac_high": 0.02,
        # mismatch: decades apart and a 0, which the symlog axis draws
        "mismatch/kl": 2e-3 * step, "mismatch/mean_abs_logp_diff": 0.05, "mismatch/token_out_frac": 0.01,
        "mismatch/seq_out_frac": 0.0, "mismatch/corrected_frac": 0.0,
        "time/rollout": 3.0, "time/reward": 0.2, "time/train": 4.0, "time/sync": 0.5, "time/step": 8.0,
        **({"eval/accuracy": 0.25} if step % 2 == 0 else {}),
    }


def _write(run: Path, rows: list[dict], tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return run


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_load_metrics_sorts_and_drops_torn_last_line(tmp_path):
    # Rows out of order (a resumed run) and half a JSON object at the end (killed mid-write).
    run = _write(tmp_path / "run", [_row(3), _row(1), _row(2)], tail='{"step": 4, "rew')
    rows = load_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert load_metrics(run / "metrics.jsonl") == rows  # the file itself works too


def test_series_skips_null_and_missing(tmp_path):
    rows = load_metrics(_write(tmp_path / "run", [_row(s) for s in (1, 2, 3, 4)]))
    # train/kl is null at step 1: 0.01*2, 0.01*3, 0.01*4 remain.
    assert series(rows, "train/kl") == ([2.0, 3.0, 4.0], [0.02, 0.03, 0.04])
    # eval/accuracy only at even steps.
    assert series(rows, "eval/accuracy") == ([2.0, 4.0], [0.25, 0.25])
    assert series(rows, "no/such_key") == ([], [])


@needs_mpl
def test_plot_run_writes_every_png(tmp_path):
    run = _write(tmp_path / "run", [_row(s) for s in range(1, 11)])
    written = plot_run(run)
    assert {p.name for p in written} == ALL_PNGS
    assert all(p.parent == run / "plots" for p in written)
    for p in written:
        assert p.stat().st_size > 1000
        assert _png_size(p) == (800, 450)  # FIG_SIZE 8 x 4.5 in at 100 dpi


@needs_mpl
def test_plot_run_skips_groups_without_values(tmp_path):
    rows = [{"step": s, "reward/mean": 0.5, "train/kl": None, "time/rollout": 1.0, "time/train": None}
            for s in (1, 2, 3)]
    out = tmp_path / "pngs"
    written = plot_run(_write(tmp_path / "run", rows), out)
    # kl has only nulls; length, entropy and clip keys are absent.
    assert sorted(p.name for p in written) == ["reward.png", "time.png"]
    assert sorted(p.name for p in out.iterdir()) == ["reward.png", "time.png"]


def test_missing_or_empty_metrics_is_one_line_error(tmp_path, capsys):
    with pytest.raises(PlotError, match=r"metrics.jsonl not found: pass a run directory"):
        plot_run(tmp_path)
    _write(tmp_path / "empty", [])
    with pytest.raises(PlotError, match="has no logged steps yet"):
        plot_run(tmp_path / "empty")
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@needs_mpl
def test_main_writes_pngs_and_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _write(tmp_path / "run", [_row(s) for s in (1, 2, 3)])
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out), "--tensorboard"]) == 0
    assert {p.name for p in out.glob("*.png")} == ALL_PNGS
    # Exported twice: old event files are replaced, not added to.
    export_tensorboard(run, out / "tensorboard")
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    kl = acc.Scalars("train/kl")
    assert [e.step for e in kl] == [2, 3]  # step 1 was null
    assert [round(e.value, 6) for e in kl] == [0.02, 0.03]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [2]
    assert "step" not in acc.Tags()["scalars"]


def test_missing_matplotlib_is_one_line_error(tmp_path, monkeypatch):
    run = _write(tmp_path / "run", [_row(1)])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(PlotError, match=r"matplotlib is not installed: pip install 'grpo_trainer\[plot\]'"):
        plot_run(run)
    assert not (run / "plots").exists()  # nothing half-written
