"""What `evaluate` prints and writes: the accuracy table with intervals, paired tests against the
first model, and the JSON of both."""

from __future__ import annotations

import json
import os
from pathlib import Path

from grpo_trainer.eval_settings import GSM8K_MODES
from grpo_trainer.stats import paired_test

ALPHA = 0.05
WHAT = {"strict": "strict: the number after a final '####'", "flexible": "flexible: the last number"}


def _labels(result: dict) -> list[str]:
    """Extraction labels in a fixed order (strict before flexible), so tables of runs with
    different verifier modes line up."""
    labels = list(result.get("by_extraction") or {})
    return sorted(labels, key=lambda lab: GSM8K_MODES.index(lab) if lab in GSM8K_MODES else -1)


def compare(results: list[dict]) -> list[dict]:
    """Every later model against the first, per extraction, on the problems both were scored on
    (by index: prompts dropped for one tokenizer's length are left out of the pair)."""
    if len(results) < 2:
        return []
    base = results[0]
    out = []
    for res in results[1:]:
        for label in [lab for lab in _labels(base) if lab in (res.get("by_extraction") or {})]:
            def scores(r: dict) -> dict[int, float]:
                return {e["index"]: e["correct_by"][label] / e["num_samples"] for e in r["per_example"]}
            a, b = scores(base), scores(res)
            common = sorted(a.keys() & b.keys())
            if common:
                out.append({"baseline": base["model"], "model": res["model"], "extraction": label,
                            **paired_test([a[i] for i in common], [b[i] for i in common])})
    return out


def _cell(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(results: list[dict]) -> str:
    """One row per model: accuracy (pass@1 or avg@n) and, when k > 1, pass@k per answer extraction,
    each with its 95 % Wilson interval; then format rate, completion length, truncation, seconds."""
    if not results:
        return "(no results)"
    r0 = results[0]
    acc_name = "pass@1" if r0["num_samples"] == 1 else f"avg@{r0['num_samples']}"
    labels = _labels(r0)
    cols: list[tuple[str, object]] = [("model", lambda r: str(r["model"])),
                                      ("step", lambda r: "-" if r.get("step") is None else str(r["step"])),
                                      ("n", lambda r: str(r["n"]))]
    for lab in labels or [None]:
        get = (lambda r: r) if lab is None else (lambda r, lab=lab: r["by_extraction"][lab])
        head = acc_name if lab is None else f"{acc_name} {lab}"
        cols.append((head, lambda r, get=get: _cell(get(r)["accuracy"], get(r)["accuracy_ci"])))
        if r0["k"] > 1:
            cols.append((head.replace(acc_name, f"pass@{r0['k']}"),
                         lambda r, get=get: _cell(get(r)["pass@k"], get(r)["pass@k_ci"])))
    cols += [("format", lambda r: f"{r['format']:.3f}"), ("tokens", lambda r: f"{r['mean_completion_tokens']:.1f}"),
             ("trunc", lambda r: f"{r['truncated']:.3f}"), ("secs", lambda r: f"{r['seconds']:.0f}")]
    rows = [[fn(r) for _, fn in cols] for r in results]
    widths = [max(len(head), *(len(row[i]) for row in rows)) for i, (head, _) in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    notes = [f"[95% Wilson interval]; {', '.join(WHAT.get(lab, lab) for lab in labels)}"] if labels else []
    if len(labels) > 1:
        notes.append(f"'accuracy' in the JSON: {r0.get('extraction', labels[0])}")
    return "\n".join([line([h for h, _ in cols]), line(["-" * w for w in widths]), *map(line, rows), *notes])


def format_comparisons(comparisons: list[dict]) -> str:
    """One line per comparison saying whether the change could be noise."""
    lines = []
    for c in comparisons:
        delta = c["second"] - c["first"]
        verdict = (f"significant at the {ALPHA:.0%} level" if c["p_value"] < ALPHA else
                   f"not significant at the {ALPHA:.0%} level: the difference is within noise")
        lines.append(f"{c['model']} vs {c['baseline']} ({c['extraction']}, {c['n']} paired problems): "
                     f"{c['first']:.3f} -> {c['second']:.3f} ({delta:+.3f}); better on {c['gained']}, "
                     f"worse on {c['lost']}; {c['test']} p = {c['p_value']:.2g}, {verdict}")
    return "\n".join(lines)


def write_results(out: Path, config: dict, results: list[dict]) -> list[dict]:
    """The JSON of the models evaluated so far, with their paired comparisons; returns those."""
    comparisons = compare(results)
    write_json_whole(out, {"config": config, "results": results, "comparisons": comparisons}, indent=1)
    return comparisons


def write_json_whole(path: Path, obj, indent: int | None = None) -> None:
    """Write to a temporary name and rename: a kill leaves the previous file or none, never half
    of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + "\n")
    os.replace(tmp, path)
