"""The benchmark's timed measurements: GEMM peak, rollout, forward+backward, weight sync. Each
takes live objects (an engine, a model) and returns a dict for the report."""

from __future__ import annotations

import math
import resource
import statistics
import time
from pathlib import Path

from grpo_trainer.bench.report import gemm_flops, linear_flops, train_flops


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Clock:
    """Wall and CPU seconds of a block (CPU: all threads of this process). On a shared machine
    cpu / wall is how many cores the block really got, which says how far to trust its wall time.
    `page_faults`: the minor page faults the process took meanwhile, i.e. memory the kernel had to
    hand over (and zero) afresh instead of the allocator reusing its own."""

    def __enter__(self):
        self.t0, self.c0, self.f0 = time.perf_counter(), time.process_time(), _minor_faults()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cores_used = (time.process_time() - self.c0) / max(self.wall, 1e-9)
        self.page_faults = _minor_faults() - self.f0


def peak_rss_gib_then_reset() -> tuple[float, bool]:
    """This process's resident-memory high-water mark since the last call (Linux VmHWM), in GiB,
    and whether that mark was then reset to the current RSS (by writing 5 to /proc/self/clear_refs),
    so that the next call covers only what runs in between. Where that is not possible the peak
    since the process started (ru_maxrss) is returned, with False: later readings then include
    everything before them. The reset also resets ru_maxrss (the kernel keeps one mark), so the
    process's peak is the largest of these readings, not ru_maxrss read at the end."""
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return kib / 2**20, True
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, False


def _best_seconds(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Fastest of at least `repeats` calls of `fn` (and of `min_seconds` of them, at most 100 calls),
    after one untimed call that picks and packs the kernels. Best-of, since other tenants only ever
    slow a run down."""
    fn()
    best, spent, i = math.inf, 0.0, 0
    while i < repeats or (spent < min_seconds and i < 100):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, i = min(best, dt), spent + dt, i + 1
    return best


def gemm_peaks(n: int, repeats: int, min_seconds: float, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    """Best FLOP/s of an n x n matmul in each dtype, over at least `repeats` timings and
    `min_seconds` of them: the ceiling a dense model can reach. Best-of, since other tenants only
    ever slow a run down."""
    import torch

    from grpo_trainer.cpu_linear import matmul_t

    peaks = {}
    for name in dtypes:
        a, b = (torch.randn(n, n).to(getattr(torch, name)) for _ in range(2))
        # fp32: torch's matmul (MKL on CPU) and the trainer's linear kernel (oneDNN); bf16: one kernel
        kernels = [lambda: torch.mm(a, b)] + ([lambda: matmul_t(a, b)] if name == "float32" else [])
        peaks[name] = max(gemm_flops(n) / _best_seconds(fn, repeats, min_seconds) for fn in kernels)
    return peaks


def model_gemm_rate(shapes: list[tuple[int, int, int]], tokens: int, dtype: str, repeats: int,
                    onednn: bool = True) -> dict:
    """Best FLOP/s of the model's own linear GEMMs alone (`report.linear_shapes`), forward and both
    backward products, `tokens` rows each (a micro-batch's): the ceiling forward+backward could
    reach if everything else (attention, norms, casts, the loss) took no time. Narrow models' GEMMs
    fall well short of a 2048^2 matmul's rate, most of all with bf16 tiles. The kernels are the
    trainer's (cpu_linear.py): x@W.T and g@W by its linear kernel (torch's with `onednn` false),
    g.T@x by torch's matmul."""
    import torch

    from grpo_trainer.cpu_linear import matmul_t

    dt = getattr(torch, dtype)
    seconds = 0.0
    for k, n, count in shapes:
        x, w, g = torch.randn(tokens, k).to(dt), torch.randn(n, k).to(dt), torch.randn(tokens, n).to(dt)
        seconds += count * _best_seconds(lambda: (matmul_t(x, w, onednn), matmul_t(g, w.t(), onednn), g.t() @ x),
                                        repeats)
    flops = linear_flops(shapes, tokens)
    return {"tokens": tokens, "dtype": dtype, "flops": flops, "seconds": seconds, "flops_per_s": flops / seconds}


def rollout_gemm_floor(shapes: list[tuple[int, int, int]], prompt_lens: list[int], completion_lens: list[int],
                       dtype: str, repeats: int) -> dict:
    """Seconds the model's linear GEMMs alone (`report.merged_shapes`, forward only) take for one
    rollout: each prompt's prefill once (its LM head on its last token only), then one step per
    generated token after the first, at as many rows as completions still running then. Each step
    runs every layer's GEMMs in turn on that layer's own weights, so the weights come from memory
    as in a real forward (a first version repeated each GEMM on one weight, which then stayed in
    the caches: 11.8 s for an fp32 rollout, against 13.3 s layer after layer in the next run).
    Best-of per step size; no attention, sampling or scheduling: no engine on this CPU samples
    those tokens faster with these kernels. The kernel is oneDNN's for fp32 too (`matmul_t`), as in
    vLLM's CPU backend; torch's fp32 matmul (MKL) gave a 13.1-13.3 s floor where oneDNN's gives
    less (README, "Speed")."""
    import torch

    from grpo_trainer.cpu_linear import matmul_t

    dt = getattr(torch, dtype)
    *per_layer, (k_head, vocab, _) = shapes
    layers = max(count for _, _, count in per_layer)
    weights = [[torch.randn(n, k).to(dt) for k, n, _ in per_layer] for _ in range(layers)]
    head = torch.randn(vocab, k_head).to(dt)

    def forward_s(rows: int, head_rows: int) -> float:
        inputs = {k: torch.randn(rows, k).to(dt) for k, _, _ in per_layer}
        last = torch.randn(head_rows, k_head).to(dt)

        def forward():
            for layer in weights:
                for w in layer:
                    matmul_t(inputs[w.shape[1]], w)
            matmul_t(last, head)
        return _best_seconds(forward, repeats)

    prefill = forward_s(sum(prompt_lens), len(prompt_lens))
    steps: dict[int, int] = {}  # running rows -> decode steps at that many
    for t in range(1, max(completion_lens, default=0)):
        rows = sum(1 for n in completion_lens if n > t)
        steps[rows] = steps.get(rows, 0) + 1
    decode = sum(count * forward_s(rows, rows) for rows, count in steps.items())
    return {"seconds": prefill + decode, "prefill_s": prefill, "decode_s": decode,
            "decode_steps": sum(steps.values()), "dtype": dtype}


def _autocast(mixed: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed == "bf16")


def time_rollout(engine, prompt_ids, sampling, warm_tokens: int, mixed: str = "no") -> tuple[dict, object]:
    from grpo_trainer.rollout import SamplingConfig

    warm = SamplingConfig(sampling.num_generations, min(warm_tokens, sampling.max_tokens), sampling.temperature)
    with _autocast(mixed):
        engine.generate(prompt_ids, warm, seed=1)
        with Clock() as clock:
            batch = engine.generate(prompt_ids, sampling, seed=0)
    n = batch.num_tokens
    return {"seconds": clock.wall, "generated_tokens": n, "tokens_per_s": n / clock.wall,
            "cores_used": clock.cores_used, "completions": len(batch.completion_ids),
            "truncated_frac": sum(batch.truncated) / max(len(batch.truncated), 1),
            "max_completion_tokens": max(map(len, batch.completion_ids), default=0)}, batch


def _fwd_bwd(model, mbs, mixed: str) -> Clock:
    """Forward+backward of a token-mean log-prob loss over the micro-batches: the update's
    arithmetic without its loss terms, metrics and optimizer step."""
    from grpo_trainer.forward import completion_logprobs

    model.train()
    with Clock() as clock:
        for mb in mbs:
            with _autocast(mixed):
                logp, _ = completion_logprobs(model, mb, temperature=1.0)
            mask = mb.completion_mask
            (-(logp.float() * mask).sum() / mask.sum().clamp(min=1)).backward()
    model.zero_grad(set_to_none=True)
    return clock


def time_train(model, batch, pad_id: int, mixed: str, micro_batch_size: int) -> dict:
    """Forward+backward of a token-mean log-prob loss, as the update does, over the batch."""
    from grpo_trainer.forward import micro_batches

    prompts = batch.row_prompts()
    comps = [c or [pad_id] for c in batch.completion_ids]  # an empty sample still costs its prompt
    mbs = micro_batches(list(range(len(prompts))), prompts, comps, pad_id, micro_batch_size)
    _fwd_bwd(model, mbs[:1], mixed)  # warm-up: allocator and kernel choice
    clock = _fwd_bwd(model, mbs, mixed)
    seconds = clock.wall
    # Tokens the forward computes: each distinct prompt once, plus every completion.
    completion_tokens = int(sum(mb.completion_mask.sum() for mb in mbs))
    tokens = int(sum(mb.prompt_mask.sum() for mb in mbs)) + completion_tokens
    n_params = sum(p.numel() for p in model.parameters())
    flops = train_flops(n_params, tokens)
    return {"seconds": seconds, "tokens": tokens, "completion_tokens": completion_tokens,
            "row_tokens": int(sum(mb.attention_mask.sum() for mb in mbs)),
            "padded_tokens": int(sum(mb.padded_tokens for mb in mbs)),
            "micro_batches": len(mbs), "micro_batch_size": micro_batch_size, "tokens_per_s": tokens / seconds,
            "cores_used": clock.cores_used, "params": n_params, "flops": flops, "flops_per_s": flops / seconds}


def time_sync(engine, model, repeats: int) -> dict:
    from grpo_trainer.weights import iter_full_weights

    times, moved = [], 0
    dtype = getattr(engine, "weight_dtype", None)  # the engine's own: it receives the weights cast
    for _ in range(repeats):
        moved = 0

        def counted():
            nonlocal moved
            for name, t in iter_full_weights(model):
                moved += t.numel() * (dtype.itemsize if dtype is not None else t.element_size())
                yield name, t

        t0 = time.perf_counter()
        engine.load_weights(counted())
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"seconds": sec, "seconds_all": times, "bytes": moved, "bytes_per_s": moved / sec}


def _trained_micro_batches(trainer, record) -> tuple[list[int], list]:
    """The rows of `record` the step's update trained, and those rows packed as the update packs
    them (row 0 alone if none was trained: the update then runs one zero-weighted micro-batch)."""
    from grpo_trainer.forward import record_micro_batches

    up = trainer.updater
    trained = up.trained_rows(record, trainer.beta)
    rows = [i for i in range(record.num_rows) if record.in_loss[i] and trained[i]]
    return rows, [mb.to(trainer.acc.device)
                  for mb in record_micro_batches(record, rows or [0], up.micro_batch_size, up.micro_batch_tokens)]


def time_bare(trainer, record, mixed: str) -> Clock:
    """The bare forward+backward (part 2's measurement) of the rows a step's update trained, in the
    trainer's process with the engine alive. It leaves the weights and gradients as they were."""
    return _fwd_bwd(trainer.updater.model, _trained_micro_batches(trainer, record)[1], mixed)


def time_colocation(trainer, record, in_step_s: float, in_step_faults: int, mixed: str,
                    paired: list[dict] | None = None, repeats: int = 2) -> dict:
    """The colocation figure. `paired`: each step's train phase with its rows' bare forward+backward
    run right after that step ({"step", "train_in_step_s", "fwd_bwd_s"}): both figures of a pair
    are one sample each, taken seconds apart, and their median ratio is the headline (a single
    in-step sample against the best of several bare ones would read noise as a tax). The bare run
    comes second, on shapes the update has just used, so it never pays a first pass's costs.
    Then the last step's update again, on the same rows, right after the steps: `replayed_s`, the
    whole update (`updater.run`: loss terms, metrics, clipping, optimizer step);
    `fwd_bwd_s`, its bare forward+backward. in-step vs replayed is what the step's surroundings cost
    (the rollout before it); replayed vs bare is the update's own work around forward+backward.
    Interleaved, best of `repeats`, since other tenants only ever slow a run down. It trains the
    policy further. `in_step_s`: the last step's train phase; `in_step_faults`: the page faults of
    its `updater.run`."""
    from grpo_trainer.step_stats import StepStats

    up = trainer.updater
    rows, mbs = _trained_micro_batches(trainer, record)
    replayed, bare = [], []
    for _ in range(repeats):
        with Clock() as clock:
            up.run(record, trainer.beta, StepStats(), seed=0)
        replayed.append(clock)
        bare.append(_fwd_bwd(up.model, mbs, mixed))
    best_replayed, best_bare = min(c.wall for c in replayed), min(c.wall for c in bare)
    paired = paired or []
    return {"rows": len(rows), "train_in_step_s": in_step_s, "replayed_s": best_replayed,
            "fwd_bwd_s": best_bare, "replayed_all": [c.wall for c in replayed], "fwd_bwd_all": [c.wall for c in bare],
            "in_step_over_fwd_bwd": in_step_s / best_bare, "replayed_over_fwd_bwd": best_replayed / best_bare,
            "paired": paired,
            "in_step_over_fwd_bwd_paired": (statistics.median(p["train_in_step_s"] / p["fwd_bwd_s"] for p in paired)
                                            if paired else None),
            "page_faults_in_step": in_step_faults, "page_faults_replayed_all": [c.page_faults for c in replayed],
            "page_faults_fwd_bwd_all": [c.page_faults for c in bare]}


def checkpoint_figures(path: Path, model) -> dict:
    """A saved checkpoint's bytes by top-level part (model/, state/, ...), and how many times the
    model's weights are in it: its safetensors files' bytes (HF's model/ and accelerate's own copy,
    state/model.safetensors, if written) over the model's parameter bytes (a tied embedding once)."""
    sizes = {f: f.stat().st_size for f in Path(path).rglob("*") if f.is_file()}
    by_part: dict[str, int] = {}
    for f, size in sizes.items():
        part = f.relative_to(path).parts[0]
        by_part[part] = by_part.get(part, 0) + size
    weights = sum(size for f, size in sizes.items() if f.suffix == ".safetensors")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"bytes": sum(by_part.values()), "by_part": by_part, "weight_file_bytes": weights, "param_bytes": params,
            "weight_copies": weights / params}
