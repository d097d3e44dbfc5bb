"""Multi-turn tool-use rollouts (rollout/multiturn.py): token in, token out.
Whole training runs with tools are in test_multiturn_runs.py.

The ids the trainer sees must be exactly the engine's sampled ids and the tool-result ids, in
order, with the loss mask 0 on the tool's. Tool results come from the real sandbox (python tool).
Engines: a scripted one where a test is about the loop's bookkeeping (it says so), the real HF
engine on the tiny random Llama elsewhere, and vLLM in the slow tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from grpo_trainer import algo
from grpo_trainer.models import load_tokenizer, resolve_model_path
from grpo_trainer.record import RolloutRecord
from grpo_trainer.rollout import RolloutBatch, RolloutEngine, SamplingConfig
from grpo_trainer.rollout.multiturn import FORMATS, MultiTurnEngine, ToolFormat, ToolMessage, turn_seed
from grpo_trainer.step_stats import StepStats, add_rollout_stats, rollout_metrics
from grpo_trainer.tools import SandboxLimits, ToolSet


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve_model_path("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def python_tool():
    tools = ToolSet(["python"], limits=SandboxLimits(wall_s=2.0, cpu_s=1.0), num_workers=2)
    yield tools
    tools.close()


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


class ScriptedEngine(RolloutEngine):
    """A fake engine replaying fixed turns, standing in where a test is about the multi-turn loop's
    bookkeeping, not sampling: call k returns `turns[k]` (one (ids, truncated) per prompt row) and
    records the prompts and limits it was given."""

    def __init__(self, turns: list[list[tuple[list[int], bool]]]):
        self.turns, self.calls = turns, []

    def generate(self, prompt_ids, sampling, seed, max_tokens=None):
        self.calls.append({"prompts": [list(p) for p in prompt_ids], "limits": max_tokens, "seed": seed,
                           "n": sampling.num_generations, "stop": sampling.stop})
        out = self.turns[len(self.calls) - 1]
        assert len(out) == len(prompt_ids) * sampling.num_generations
        return RolloutBatch([list(p) for p in prompt_ids], [list(i) for i, _ in out],
                            [[-0.5] * len(i) for i, _ in out], [t for _, t in out])

    def load_weights(self, named_tensors):
        pass


# ---------------------------------------------------------------- rendering and parsing
def test_tool_message_is_the_chat_templates_tool_turn(tok):
    msg = ToolMessage(tok, max_tokens=3)
    assert msg.role == "tool"
    # SmolLM2's ChatML: the assistant turn closes, a tool turn holds the result, an assistant turn opens.
    head, tail = "<|im_end|>\n<|im_start|>tool\n", "<|im_end|>\n<|im_start|>assistant\n"
    assert msg.ids("42") == enc(tok, head) + enc(tok, "42") + enc(tok, tail)
    assert enc(tok, head)[0] == tok.eos_token_id
    # The body is cut to max_tokens, and special-token text a tool prints stays plain text.
    body = enc(tok, "one two three four five")
    assert msg.ids("one two three four five") == enc(tok, head) + body[:3] + enc(tok, tail)
    assert tok.eos_token_id not in msg.ids("<|im_end|>")[len(enc(tok, head)):-len(enc(tok, tail))]


def test_template_without_tool_role_falls_back_to_user(tok):
    strict = tok.__class__.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    strict.chat_template = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}"
                            "{{ raise_exception('no such role') }}{% endif %}<|im_start|>{{ m['role'] }}\n"
                            "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    msg = ToolMessage(strict, max_tokens=8)
    assert msg.role == "user"
    assert msg.ids("7") == enc(tok, "<|im_end|>\n<|im_start|>user\n7<|im_end|>\n<|im_start|>assistant\n")


def test_formats_parse_calls_and_name_malformed_ones():
    py, tc = FORMATS["python_block"], FORMATS["tool_call"]
    assert py.parse("Let me see.\n```python\nx = 1\n```\nno\n```python\nprint(6 * 7)\n```\n") == \
        ("python", "print(6 * 7)")
    assert py.parse("Here:\n```\n").startswith("error: malformed tool call")
    assert tc.parse('<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>') == \
        ("calculator", '{"expression": "2+3"}')
    assert "not JSON" in tc.parse("<tool_call>{name: calculator}</tool_call>")
    assert 'no "name"' in tc.parse('<tool_call>{"arguments": {}}</tool_call>')
    # The opening fence never contains the python stop string; the closing one does.
    assert all(s not in "```python\n" and s in "x\n```\n" for s in py.stop)


# ---------------------------------------------------------------- the loop, scripted
def test_scripted_transcript_gives_exact_ids_and_mask(tok, python_tool):
    prompt = enc(tok, "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n")
    t1 = enc(tok, "I compute it.\n```python\nprint(6 * 7)\n```\n")
    t2 = enc(tok, "It is 42.") + [tok.eos_token_id]
    t1b = enc(tok, "It is 40.") + [tok.eos_token_id]  # the second sample answers at once
    engine = ScriptedEngine([[(t1, False), (t1b, False)], [(t2, False)]])
    mt = MultiTurnEngine(engine, python_tool, tok, "python_block", max_turns=4,
                         max_tool_output_tokens=16)
    batch = mt.generate([prompt], SamplingConfig(2, 64, stop=()), seed=11)
    tool = (enc(tok, "<|im_end|>\n<|im_start|>tool\n") + enc(tok, "42\n")
            + enc(tok, "<|im_end|>\n<|im_start|>assistant\n"))
    assert batch.completion_ids == [t1 + tool + t2, t1b]
    assert batch.tool_mask == [[False] * len(t1) + [True] * len(tool) + [False] * len(t2), [False] * len(t1b)]
    assert batch.logprobs[0] == [-0.5] * len(t1) + [0.0] * len(tool) + [-0.5] * len(t2)
    assert batch.truncated == [False, False]
    assert batch.tool_counts == [(2, 1, 0, 0), (1, 0, 0, 0)]
    # Turn 2 continued from the exact ids so far, one row (n=1), its own budget and seed.
    assert engine.calls[1] == {"prompts": [prompt + t1 + tool], "limits": [64 - len(t1) - len(tool)],
                               "seed": turn_seed(11, 1), "n": 1, "stop": FORMATS["python_block"].stop}
    assert engine.calls[0]["stop"] == FORMATS["python_block"].stop and engine.calls[0]["n"] == 2
    # The record: tool tokens out of the loss and at advantage 0; policy tokens in, at the row's advantage.
    rec = RolloutRecord.from_engine(batch, [0], tok)
    assert rec.loss_mask[0, :len(batch.completion_ids[0])].tolist() == [not m for m in batch.tool_mask[0]]
    rec = rec.with_advantages(torch.tensor([1.5, -1.5]))
    assert rec.advantages[0].tolist() == [0.0 if m else 1.5 for m in batch.tool_mask[0]]
    assert rec.advantages[1, :len(t1b)].tolist() == [-1.5] * len(t1b) and rec.advantages[1, len(t1b):].eq(0).all()
    both = RolloutRecord.concat([rec, rec]).select_groups([1])
    assert torch.equal(both.tool_mask, rec.tool_mask) and torch.equal(both.tool_counts, rec.tool_counts)


def test_malformed_call_and_tool_timeout_are_results_not_crashes(tok, python_tool):
    prompt = enc(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    bad = enc(tok, "Here:\n```\n")  # closes a fence it never opened: malformed
    loop = enc(tok, "```python\nwhile True:\n    pass\n```\n")  # runs into the sandbox's wall-clock limit
    done = enc(tok, "ok") + [tok.eos_token_id]
    engine = ScriptedEngine([[(bad, False), (loop, False)], [(done, False), (done, False)]])
    mt = MultiTurnEngine(engine, python_tool, tok, "python_block", 4, 64)
    batch = mt.generate([prompt], SamplingConfig(2, 200), seed=0)
    assert batch.tool_counts == [(2, 1, 1, 0), (2, 1, 0, 1)]
    texts = [tok.decode([t for t, m in zip(ids, mask) if m])
             for ids, mask in zip(batch.completion_ids, batch.tool_mask)]
    assert "malformed tool call" in texts[0]
    assert texts[1].startswith("<|im_end|>\n<|im_start|>tool\n[timeout:")  # the sandbox says it ran out of time
    assert [c[-len(done):] for c in batch.completion_ids] == [done, done]


def test_turn_cap_and_length_cap(tok, python_tool):
    prompt = enc(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    call = enc(tok, "```python\nprint(1)\n```\n")
    tool = MultiTurnEngine(ScriptedEngine([]), python_tool, tok, "python_block", 2, 16).message.ids("1\n")
    # Turn cap 2: the second turn's call is neither run nor counted; the row is not truncated.
    engine = ScriptedEngine([[(call, False)], [(call, False)]])
    batch = MultiTurnEngine(engine, python_tool, tok, "python_block", 2, 16).generate(
        [prompt], SamplingConfig(1, 200), seed=0)
    assert batch.completion_ids == [call + tool + call] and batch.tool_counts == [(2, 1, 0, 0)]
    assert batch.truncated == [False] and len(engine.calls) == 2
    # Length cap: a result that leaves no room to generate ends the trajectory, truncated, without it.
    cap = len(call) + len(tool)
    engine = ScriptedEngine([[(call, False)]])
    batch = MultiTurnEngine(engine, python_tool, tok, "python_block", 4, 16).generate(
        [prompt], SamplingConfig(1, cap), seed=0)
    assert batch.completion_ids == [call] and batch.truncated == [True] and len(engine.calls) == 1
    # One token more and it fits: turn 2 gets a budget of exactly 1, and the engine's cut is the trajectory's.
    engine = ScriptedEngine([[(call, False)], [(call[:1], True)]])
    batch = MultiTurnEngine(engine, python_tool, tok, "python_block", 4, 16).generate(
        [prompt], SamplingConfig(1, cap + 1), seed=0)
    assert engine.calls[1]["limits"] == [1]
    assert batch.completion_ids == [call + tool + call[:1]] and batch.truncated == [True]


# ---------------------------------------------------------------- the loop on a real engine
# A format for the random tiny model: its turns end at the first "e" it writes (it writes one
# within a few tokens) and every turn "calls" the python tool with fixed code, so three turns
# with real tool results happen without a model that knows any format.
E_FORMAT = ToolFormat(("e",), lambda text: ("python", "print(6 * 7)"), "e")


class Spy(RolloutEngine):
    """Passes every call to the real engine and keeps what went in and came out."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompt_ids, sampling, seed, max_tokens=None):
        out = self.engine.generate(prompt_ids, sampling, seed, max_tokens)
        self.calls.append((prompt_ids, max_tokens, out))
        return out

    def load_weights(self, named_tensors):
        pass


@pytest.fixture(scope="module")
def hf_engine(tiny_llama, tok):
    from transformers import AutoModelForCausalLM

    from grpo_trainer.rollout import make_engine

    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    return make_engine("hf", model_path=str(tiny_llama), policy=policy, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tokenizer=tok)


def test_trainer_ids_are_engine_ids_and_tool_ids_over_three_turns(tok, hf_engine, python_tool, monkeypatch):
    monkeypatch.setitem(FORMATS, "e_stop", E_FORMAT)
    spy = Spy(hf_engine)
    mt = MultiTurnEngine(spy, python_tool, tok, "e_stop", max_turns=3, max_tool_output_tokens=8)
    prompts = [enc(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), enc(tok, "<|im_start|>user\nyo")]
    sampling = SamplingConfig(3, 60, temperature=1.0)
    batch = mt.generate(prompts, sampling, seed=5)
    tool = mt.message.ids("42\n")
    turns = [c[0] for c in batch.tool_counts]
    assert len(spy.calls) == 3 and turns.count(3) >= 3  # several rows took all three turns
    # Rebuild every row from the engine's outputs and the tool's ids alone, turn by turn: each later
    # call's inputs are, in row order, the rows that go on, as prompt + ids so far + tool ids.
    rows = [list(c) for c in spy.calls[0][2].completion_ids]
    masks = [[False] * len(r) for r in rows]
    for prompts_in, limits, out in spy.calls[1:]:
        k = 0
        for i in range(len(rows)):
            if k < len(prompts_in) and prompts_in[k] == prompts[i // 3] + rows[i] + tool:
                assert limits[k] == 60 - len(rows[i]) - len(tool)  # the whole trajectory's budget left
                masks[i] += [True] * len(tool) + [False] * len(out.completion_ids[k])
                rows[i] += tool + out.completion_ids[k]
                k += 1
        assert k == len(prompts_in) == len(out.completion_ids)  # every engine input accounted for
    assert batch.completion_ids == rows and batch.tool_mask == masks
    rec = RolloutRecord.from_engine(batch, [0, 1], tok)
    for i, row in enumerate(rows):
        n = len(row)
        assert n <= 60 and rec.completion_ids[i, :n].tolist() == row
        assert rec.tool_mask[i, :n].tolist() == masks[i] and rec.loss_mask[i, :n].tolist() == [not m for m in masks[i]]
        assert rec.logprobs[i, :n][rec.tool_mask[i, :n]].eq(0).all()
        assert sum(masks[i]) == len(tool) * (turns[i] - 1)
    # The same seed gives the same transcripts (what exact resume relies on).
    again = mt.generate(prompts, sampling, seed=5)
    assert again.completion_ids == batch.completion_ids and again.tool_mask == batch.tool_mask


def test_hf_engine_stops_at_strings_and_per_prompt_limits(tok, hf_engine):
    prompts = [enc(tok, "<|im_start|>user\nhi"), enc(tok, "<|im_start|>user\nhello there")]
    out = hf_engine.generate(prompts, SamplingConfig(4, 40, stop=("e",)), seed=3, max_tokens=[40, 5])
    for j, (ids, cut) in enumerate(zip(out.completion_ids, out.truncated)):
        text = tok.decode(ids)
        if cut:  # the prompt's own limit ended it, before any "e" or EOS
            assert len(ids) == [40, 5][j // 4] and "e" not in text
        elif ids[-1] != tok.eos_token_id:  # the stop string ends the sample, its token kept
            assert "e" in text and "e" not in tok.decode(ids[:-1])
        assert len(ids) <= [40, 5][j // 4] and len(out.logprobs[j]) == len(ids)
    assert any(not c and ids[-1] != tok.eos_token_id for ids, c in zip(out.completion_ids, out.truncated))


# ---------------------------------------------------------------- the loss side
def test_policy_losses_and_mismatch_ignore_tool_tokens():
    """A row with tool tokens masked out gives the same loss and mismatch sums as the row with
    those tokens removed (GSPO's and CISPO's sequence means included)."""
    torch.manual_seed(0)
    logp, old = -torch.rand(2, 9), -torch.rand(2, 9)
    engine = old + 0.05 * torch.randn(2, 9)
    tool = torch.zeros(2, 9, dtype=torch.bool)
    tool[0, 3:6] = True  # a tool message in row 0
    engine[tool] = 0.0  # the engine has no log-prob there
    mask = ~tool
    mask[1, 6:] = False  # row 1: six tokens and padding
    keep = [torch.tensor([0, 1, 2, 6, 7, 8]), torch.arange(6)]
    squeeze = lambda t: torch.stack([t[i, k] for i, k in enumerate(keep)])  # noqa: E731
    adv = torch.tensor([[1.0], [-0.5]]).expand(2, 9)
    for name in ("ppo_clip", "gspo", "cispo"):
        entry = algo.POLICY_LOSSES[name]
        fn = lambda *a: entry.fn(*a, **entry.bind({"eps_low": 0.2, "eps_high": 0.2, "gspo_eps_low": 3e-4,  # noqa: E731
                                                   "gspo_eps_high": 4e-4, "cispo_eps_low": None,
                                                   "cispo_eps_high": 0.28, "dual_clip_c": None}))
        full, _ = fn(logp, old, adv, mask)
        short, _ = fn(squeeze(logp), squeeze(old), squeeze(adv), torch.ones(2, 6, dtype=torch.bool))
        for agg in ("token_mean", "seq_mean_token_mean"):
            a = algo.aggregate_loss(full, mask, agg, 12.0, 2.0, 9)
            b = algo.aggregate_loss(short, torch.ones(2, 6, dtype=torch.bool), agg, 12.0, 2.0, 9)
            assert torch.allclose(a, b, atol=1e-6), (name, agg)
    m_full = algo.mismatch_stats(engine, old, mask, 0.5, 2.0)
    m_short = algo.mismatch_stats(squeeze(engine), squeeze(old), torch.ones(2, 6, dtype=torch.bool), 0.5, 2.0)
    for key in m_full:
        assert torch.allclose(m_full[key], m_short[key]), key


def test_tool_metrics():
    ids = [[5, 6, 7, 8], [5, 6], [5, 6, 7], [5]]
    batch = RolloutBatch([[1, 2]], ids, [[-1.0] * len(c) for c in ids], [False, False, True, False],
                         tool_mask=[[False, True, True, False], [False, False], [False, True, False], [False]],
                         tool_counts=[(2, 1, 0, 0), (1, 0, 0, 0), (3, 2, 1, 1), (1, 0, 0, 0)])
    rec = RolloutRecord.from_batch(batch, [0], 0, ["a", "b", "c", "d"])
    rec = replace(rec, rewards=torch.tensor([1.0, 0.0, 0.5, 0.25]), correct=torch.zeros(4, dtype=torch.bool),
                  formatted=torch.zeros(4, dtype=torch.bool))
    stats = StepStats()
    add_rollout_stats(stats, [rec])
    reduced = {k: v for k, v in {**stats._sum, **stats._max}.items()}
    m = rollout_metrics(reduced, [])
    assert m["tools/turns"] == pytest.approx(7 / 4) and m["tools/calls_per_sample"] == pytest.approx(3 / 4)
    assert m["tools/used_frac"] == 0.5 and m["tools/errors"] == 1 and m["tools/timeouts"] == 1
    assert m["tools/result_tokens"] == 3
    assert m["reward/used_tool"] == pytest.approx(0.75) and m["reward/no_tool"] == pytest.approx(0.125)


# ---------------------------------------------------------------- vLLM (slow)
@pytest.mark.slow
def test_vllm_turns_continue_from_the_exact_ids(tok, tiny_llama, python_tool, monkeypatch):
    from grpo_trainer.rollout import make_engine

    monkeypatch.setitem(FORMATS, "e_stop", E_FORMAT)
    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=256,
                         kv_cache_gib=0.5)
    try:
        spy = Spy(engine)
        mt = MultiTurnEngine(spy, python_tool, tok, "e_stop", max_turns=3, max_tool_output_tokens=8)
        prompt = enc(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        batch = mt.generate([prompt], SamplingConfig(4, 60, temperature=1.0), seed=5)
        tool = mt.message.ids("42\n")
        first = spy.calls[0][2]
        for ids, cut in zip(first.completion_ids, first.truncated):  # the stop string's token is kept
            if not cut and ids[-1] != tok.eos_token_id:
                assert "e" in tok.decode(ids) and "e" not in tok.decode(ids[:-1])
        assert len(spy.calls) == 3
        for i, row in enumerate(batch.completion_ids):
            rebuilt, mask = list(first.completion_ids[i]), [False] * len(first.completion_ids[i])
            for prompts_in, limits, out in spy.calls[1:]:
                if prompt + rebuilt + tool in prompts_in:
                    k = prompts_in.index(prompt + rebuilt + tool)
                    assert limits[k] == 60 - len(rebuilt) - len(tool)
                    rebuilt += tool + out.completion_ids[k]
                    mask += [True] * len(tool) + [False] * len(out.completion_ids[k])
            assert row == rebuilt and batch.tool_mask[i] == mask and len(row) <= 60
        assert sum(c[0] == 3 for c in batch.tool_counts) >= 2
        again = mt.generate([prompt], SamplingConfig(4, 60, temperature=1.0), seed=5)
        assert again.completion_ids == batch.completion_ids
    finally:
        engine.close()


def test_prompts_carry_tool_descriptions_when_the_template_supports_them(tok):
    from grpo_trainer.data import render_prompts

    with_tools = tok.__class__.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    with_tools.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {% for t in tools %}{{ t['function']['name'] }}{% endfor %}"
        "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}<|im_start|>assistant\n")
    spec = [{"type": "function", "function": {"name": "calculator", "description": "d", "parameters": {}}}]
    _, texts, ids, _ = render_prompts([{"question": "1+1?", "answer": "2"}], with_tools, "Go.", None, 256, spec)
    assert texts[0].startswith("<|im_start|>system\nTools: calculator<|im_end|>\n<|im_start|>user\n1+1?")
    _, plain, _, _ = render_prompts([{"question": "1+1?", "answer": "2"}], with_tools, "Go.", None, 256)
    assert "Tools" not in plain[0]
