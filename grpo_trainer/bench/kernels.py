"""Where a GRPO step's time goes, kernel by kernel (the bench's `--profile`).

One extra step, after the timed ones and counted in no median, runs under torch's profiler. Each
operator's own CPU time is added to the phase it ran in (the trainer's `PhaseTimer` marks each
phase as a profiler range, `phase/<name>`) and to one of four kinds:

- linear: the weight matrices' GEMMs (oneDNN's and torch's, the engine's `onednn_mm`);
- attention: its batched products and kernels (the trainer's two matmuls, SDPA, vLLM's paged
  attention);
- sampling: vLLM's sampler kernel;
- everything else is not listed: elementwise work, norms, softmaxes, copies and Python.

Why: these kinds are what a step cannot do without. The GEMMs and attention kernels inside the
step, measured where they ran (in the models, on their own data, not in a loop over one weight
that stays in the caches), give a floor for the step that holds whatever else gets faster. The
profiler's own cost (a few microseconds per operator) lands in "everything else", not in these
kernels, so the figures are compared with the unprofiled steps' phase times.
"""

from __future__ import annotations

from contextlib import contextmanager

from grpo_trainer.metrics import PHASE_PREFIX

KINDS = {
    "linear": ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "_C::onednn_mm"),
    "attention": ("aten::bmm", "aten::baddbmm", "_C::cpu_attention_with_kv_cache",
                  "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "sampling": ("_C::fused_gumbel_argmax",),
}
_KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}


def seconds_by_phase(events) -> dict[str, dict[str, float]]:
    """{phase: {kind: seconds of those operators' own CPU time, "profiled_s": the phase's wall
    time under the profiler}} from profiler events (`prof.events()`: name, time_range in us,
    self_cpu_time_total in us). An operator counts in the innermost phase range that holds its
    start ("step" holds the others); operators outside every phase are left out."""
    ranges = [(e.time_range.start, e.time_range.end, e.name[len(PHASE_PREFIX):]) for e in events
              if e.name.startswith(PHASE_PREFIX)]
    ranges.sort(key=lambda r: r[1] - r[0])  # the innermost first
    out: dict[str, dict[str, float]] = {}
    for start, end, phase in ranges:
        row = out.setdefault(phase, {kind: 0.0 for kind in KINDS} | {"profiled_s": 0.0})
        row["profiled_s"] += (end - start) / 1e6
    for e in events:
        kind = _KIND_OF.get(e.name)
        if kind is None:
            continue
        t = e.time_range.start
        phase = next((p for start, end, p in ranges if start <= t < end), None)
        if phase is not None:
            out[phase][kind] += e.self_cpu_time_total / 1e6
    return out


@contextmanager
def profiled():
    """Yields a dict that holds `seconds_by_phase` of what ran inside, once the block is left."""
    from torch.profiler import ProfilerActivity, profile

    result: dict = {}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield result
    result.update(seconds_by_phase(prof.events()))
