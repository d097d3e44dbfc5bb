"""plot: metrics.jsonl -> PNGs (real matplotlib, Agg) and TensorBoard events."""

from __future__ import annotations

import importlib.util
import json
import math
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


def _axes(fig):
    fig.canvas.draw()  # ticks are placed at draw time
    return fig.axes[0]


@needs_mpl
def test_not_measured_is_a_gap_and_eval_points_are_markers(tmp_path):
    from grpo_trainer.plot import PLOTS, figure

    rows = [_row(s) for s in (1, 2, 3)]
    rows[1]["train/entropy"] = None  # no row trained at step 2: entropy was not measured
    spec = {p.filename: p for p in PLOTS}
    ent = _axes(figure(spec["entropy.png"], rows)).get_lines()[0]
    assert list(ent.get_xdata()) == [1.0, 2.0, 3.0]
    y = list(ent.get_ydata())
    assert y[0] == y[2] == 1.5 and math.isnan(y[1])  # a gap at step 2, not a 0
    ax = _axes(figure(spec["reward.png"], rows))
    lines = {line.get_label(): line for line in ax.get_lines()}
    held_out = lines["eval/accuracy (held-out)"]
    assert held_out.get_linestyle() == "None" and held_out.get_marker() == "D"
    assert list(held_out.get_xdata()) == [2.0]  # only step 2 of 1..3 is even
    # Three steps: the step axis has whole-number ticks only (no 1.5, 2.5).
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_xlabel() == "step" and "fraction" in ax.get_ylabel()
    assert _axes(figure(spec["entropy.png"], rows)).get_ylabel() == "nats / token"
    assert _axes(figure(spec["completion_length.png"], rows)).get_ylabel() == "tokens per completion"
    assert _axes(figure(spec["time.png"], rows)).get_ylabel() == "seconds (s)"


def _config(run: Path, **algorithm) -> None:
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"beta": 0.0, "num_iterations": 1,
                                                                   "num_mini_batches": 1, **algorithm}}))


@needs_mpl
def test_kl_and_clip_panels_only_where_they_can_apply(tmp_path, capsys):
    from grpo_trainer.plot import PLOTS, figure, run_config

    # An old-style run: beta = 0 and one update per batch, KL and clip fractions logged as zeros.
    rows = [{**_row(s), "train/kl": 0.0, "train/clip_frac_low": 0.0, "train/clip_frac_high": 0.0} for s in (1, 2, 3)]
    run = _write(tmp_path / "run", rows)
    _config(run)
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert {p.name for p in (run / "plots").glob("*.png")} == ALL_PNGS - {"kl.png", "clip_fraction.png"}
    assert "left out kl.png: no reference model (algorithm.beta = 0)" in out
    assert "left out clip_fraction.png: one update per rollout batch: the ratio is 1" in out
    # Two mini-batches: the second is updated from moved weights, the ratio can leave the clip range.
    _config(run, num_mini_batches=2, beta=0.04)
    spec = {p.filename: p for p in PLOTS}
    assert figure(spec["kl.png"], rows, run_config(run)) is not None
    ax = _axes(figure(spec["clip_fraction.png"], rows, run_config(run)))
    low, high = ax.get_lines()
    # Equal values (all 0): the two lines still differ in style, so neither hides the other.
    assert list(low.get_ydata()) == list(high.get_ydata()) == [0.0, 0.0, 0.0]
    assert (low.get_linestyle(), low.get_marker()) == ("-", "v")
    assert (high.get_linestyle(), high.get_marker()) == ("--", "^")
    assert ax.get_ylabel() == "fraction of trained tokens"
    # Without a config.yaml the values decide: all zeros is nothing to show.
    assert figure(spec["clip_fraction.png"], rows, None) is None
