"""The logged samples of a run as one self-contained HTML page, token by token.

    python -m grpo_trainer.inspect RUN_DIR [--step N] [--output page.html]

Reads RUN_DIR/samples.jsonl (written by the trainer: every trainer.log_samples_every steps and at
the last step) and writes one HTML file (default RUN_DIR/inspect.html) with its styles, script and
data inline: it opens from disk, offline. Per sample: the prompt, the reward and each reward
component, the answer the verifier parsed and the gold one, and the completion with each token
coloured by one of (a switch at the top):

  advantage   green > 0, red < 0: what the update pushed up or down
  log-prob gap  |engine log-prob - trainer log-prob|: sampler and trainer disagreeing (bf16 engine,
              stale weights); grey where the trainer did not compute it (the row was not trained)
  entropy     of the trainer's next-token distribution: where the policy was unsure

Tokens where the ratio's clip acted are boxed; tokens outside the loss mask are struck through.
A step picker chooses the step (--step N: the one shown first; default the last). The page's
address can carry `#step=N&mode=advantage|gap|entropy`.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

from grpo_trainer.plot import read_jsonl

SAMPLES_FILE = "samples.jsonl"
MODES = ("advantage", "gap", "entropy")
# RGB of a full-strength token in each colouring; weaker values are mixed with white.
COLOURS = {"positive": (26, 152, 80), "negative": (215, 48, 39), "gap": (230, 85, 13), "entropy": (84, 39, 143),
           "unmeasured": (221, 221, 221)}


class InspectError(ValueError):
    """Missing or unusable input; the message says what to do."""


def load_samples(run_dir: str | Path) -> dict[int, list[dict]]:
    """step -> its logged samples, from RUN_DIR/samples.jsonl (a torn last line is ignored)."""
    path = Path(run_dir)
    path = path / SAMPLES_FILE if path.is_dir() else path
    if not path.is_file():
        raise InspectError(f"{path} not found: pass a run directory written by grpo_trainer.train "
                           f"(its trainer.output_dir) with trainer.log_samples_every > 0")
    steps: dict[int, list[dict]] = {}
    for row in read_jsonl(path, InspectError):
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            steps.setdefault(row["step"], []).append(row)
    if not steps:
        raise InspectError(f"{path} has no samples yet: inspect again after the run has logged a step")
    return dict(sorted(steps.items()))


def render(steps: dict[int, list[dict]], title: str, step: int | None = None, mode: str = "advantage") -> str:
    """The page: `steps` as loaded by load_samples, `step` shown first (default the last)."""
    if step is None:
        step = max(steps)
    if step not in steps:
        raise InspectError(f"step {step} has no logged samples; logged steps: "
                           + ", ".join(map(str, list(steps)[:20])) + ("..." if len(steps) > 20 else ""))
    if mode not in MODES:
        raise InspectError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    data = {"steps": {str(k): _finite(v) for k, v in steps.items()}, "initial": step, "mode": mode,
            "colours": COLOURS}
    # Inside <script>, "</" would end the element: JSON may spell "<" as \u003c.
    payload = json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c")
    return (_PAGE.replace("@TITLE@", html.escape(title)).replace("@DATA@", payload)
            .replace("@MODES@", "".join(f'<label><input type="radio" name="mode" value="{m}"> {_LABELS[m]}</label>'
                                        for m in MODES)))


def _finite(value):
    """NaN/inf (JSON has neither) as null: not a number the page could colour."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


_LABELS = {"advantage": "advantage", "gap": "engine vs trainer log-prob gap", "entropy": "entropy"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>@TITLE@</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; background: #fafafa; color: #222; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: 8px 16px; z-index: 1; }
header h1 { font-size: 16px; margin: 0 12px 0 0; display: inline; }
header label { margin-right: 10px; }
#legend { margin-top: 4px; font-size: 12px; color: #555; }
.swatch { display: inline-block; width: 28px; height: 12px; vertical-align: middle; margin: 0 3px; border: 1px solid #bbb; }
main { padding: 8px 16px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.meta { font-size: 13px; color: #444; margin-bottom: 6px; }
.meta b { color: #111; }
.ok { color: #1a7f37; } .bad { color: #c62828; }
details { font-size: 13px; color: #555; margin: 4px 0; }
pre.prompt { white-space: pre-wrap; background: #f3f3f3; padding: 6px; margin: 4px 0; }
.completion { font: 13px/1.9 ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; }
.tok { padding: 1px 0; border-radius: 2px; }
.tok.clipped { outline: 2px solid #111; outline-offset: -1px; }
.tok.masked { text-decoration: line-through; color: #777; }
table.comp { border-collapse: collapse; font-size: 12px; margin: 4px 0; }
table.comp td { border: 1px solid #ddd; padding: 1px 6px; }
</style></head>
<body>
<header><h1>@TITLE@</h1>
<label>step <select id="step"></select></label> colour by: @MODES@
<div id="legend"></div></header>
<main id="samples"></main>
<script type="application/json" id="data">@DATA@</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const C = D.colours;
const stepSel = document.getElementById("step");
let state = {step: String(D.initial), mode: D.mode};
for (const kv of location.hash.slice(1).split("&")) {
  const [k, v] = kv.split("=");
  if (k === "step" && v in D.steps) state.step = v;
  if (k === "mode" && ["advantage", "gap", "entropy"].includes(v)) state.mode = v;
}
for (const s of Object.keys(D.steps)) {
  const o = document.createElement("option"); o.value = s; o.textContent = s; stepSel.appendChild(o);
}
const mix = (rgb, t) => { t = Math.max(0, Math.min(1, t));
  return "rgb(" + rgb.map(c => Math.round(255 + (c - 255) * t)).join(",") + ")"; };
const fmt = v => v === null || v === undefined ? "–" : (typeof v === "number" ? +v.toPrecision(4) : String(v));
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\"": "&quot;"}[c]));
function values(s, mode) {
  const n = (s.tokens || []).length;
  if (mode === "advantage") return s.token_advantages || Array(n).fill(null);
  if (mode === "entropy") return s.entropy || Array(n).fill(null);
  if (!s.trainer_logp) return Array(n).fill(null);
  return s.engine_logp.map((e, i) => Math.abs(e - s.trainer_logp[i]));
}
function scale(samples, mode) {
  let m = 0;
  for (const s of samples) for (const v of values(s, mode)) if (v !== null) m = Math.max(m, Math.abs(v));
  return m > 0 ? m : 1;
}
function colour(v, mode, top) {
  if (v === null) return mix(C.unmeasured, 1);
  if (mode === "advantage") return v === 0 ? "transparent" : mix(v > 0 ? C.positive : C.negative, Math.abs(v) / top);
  return mix(mode === "gap" ? C.gap : C.entropy, v / top);
}
function legend(top) {
  const m = state.mode, L = document.getElementById("legend");
  const sw = c => '<span class="swatch" style="background:' + c + '"></span>';
  let h = m === "advantage"
    ? "advantage " + sw(mix(C.negative, 1)) + "-" + fmt(top) + " … 0 … +" + fmt(top) + sw(mix(C.positive, 1))
    : (m === "gap" ? "|engine - trainer| log-prob (nats) 0" : "entropy (nats) 0") + sw(mix(m === "gap" ? C.gap : C.entropy, 0.15))
      + "…" + sw(mix(m === "gap" ? C.gap : C.entropy, 1)) + fmt(top) + " · " + sw(mix(C.unmeasured, 1)) + "not computed (row not trained)";
  L.innerHTML = h + ' · <span class="tok clipped">clipped</span> · <span class="tok masked">not in the loss</span>';
}
function card(s, k, mode, top) {
  const verdict = s.correct === null || s.correct === undefined ? ""
    : (s.correct ? ' <b class="ok">correct</b>' : ' <b class="bad">wrong</b>');
  const comps = Object.entries(s.components || {}).map(([k, v]) => "<td>" + esc(k) + "</td><td>" + fmt(v) + "</td>").join("");
  let h = '<div class="card"><div class="meta">sample ' + (k + 1) + (s.group !== undefined ? " · group " + s.group : "")
    + " · reward <b>" + fmt(s.reward) + "</b> · advantage <b>" + fmt(s.advantage) + "</b>" + verdict
    + " · parsed <b>" + esc(fmt(s.parsed)) + "</b> · gold <b>" + esc(fmt(s.gold)) + "</b>"
    + (s.truncated ? " · <b>truncated</b>" : "") + "</div>";
  if (comps) h += '<table class="comp"><tr>' + comps + "</tr></table>";
  h += "<details><summary>prompt: " + esc(s.question || "") + "</summary><pre class=\\"prompt\\">" + esc(s.prompt || "") + "</pre></details>";
  if (!s.tokens) return h + '<div class="completion">' + esc(s.completion) + "</div><i>no per-token values in this row</i></div>";
  const vals = values(s, mode);
  const toks = s.tokens.map((t, i) => {
    const cls = "tok" + (s.clipped && s.clipped[i] ? " clipped" : "") + (s.loss_mask && !s.loss_mask[i] ? " masked" : "");
    const tip = "token " + i + " " + JSON.stringify(t) + "\\nadvantage " + fmt(s.token_advantages ? s.token_advantages[i] : null)
      + "\\nengine log-prob " + fmt(s.engine_logp[i]) + "\\ntrainer log-prob " + fmt(s.trainer_logp ? s.trainer_logp[i] : null)
      + "\\nentropy " + fmt(s.entropy ? s.entropy[i] : null);
    const ink = vals[i] !== null && Math.abs(vals[i]) / top > 0.6 ? ";color:#fff" : "";  // readable on dark
    return '<span class="' + cls + '" style="background:' + colour(vals[i], mode, top) + ink + '" title="' + esc(tip) + '">'
      + esc(t).replace(/\\n/g, "↵\\n") + "</span>";
  });
  return h + '<div class="completion">' + toks.join("") + "</div></div>";
}
function draw() {
  stepSel.value = state.step;
  for (const r of document.querySelectorAll("input[name=mode]")) r.checked = r.value === state.mode;
  const samples = D.steps[state.step], top = scale(samples, state.mode);
  legend(top);
  document.getElementById("samples").innerHTML = "<p>step " + esc(state.step) + ": " + samples.length
    + " logged samples</p>" + samples.map((s, k) => card(s, k, state.mode, top)).join("");
  history.replaceState(null, "", "#step=" + state.step + "&mode=" + state.mode);
}
stepSel.addEventListener("change", () => { state.step = stepSel.value; draw(); });
for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", () => { state.mode = r.value; draw(); });
draw();
</script></body></html>
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo_trainer.inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory (trainer.output_dir) or its samples.jsonl")
    p.add_argument("--step", type=int, default=None, help="the step shown first (default: the last logged)")
    p.add_argument("--mode", choices=MODES, default="advantage", help="the colouring shown first")
    p.add_argument("--output", default=None, help="the HTML file to write (default RUN_DIR/inspect.html)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        steps = load_samples(args.run_dir)
        root = Path(args.run_dir) if Path(args.run_dir).is_dir() else Path(args.run_dir).parent
        page = render(steps, f"{root.resolve().name}: logged samples", args.step, args.mode)
        out = Path(args.output) if args.output else root / "inspect.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except (InspectError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({sum(len(v) for v in steps.values())} samples over {len(steps)} steps; open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
