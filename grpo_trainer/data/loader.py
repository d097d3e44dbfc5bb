"""Load GSM8K-format examples and render them into chat prompts.

An example is a dict with at least
  question: str   the problem text
  answer:   str   the full reference answer (worked solution + "#### N" in GSM8K)
  gold:     str   the final answer after the last "####", commas and whitespace stripped
and every other column of the source row, unchanged, because reward functions may use them.
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any

from .synthetic import make_problems

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = (
    'Solve the problem step by step, then write the final answer as a number after "####".'
)
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
# Sizes of the GSM8K splits, used for the synthetic source when num_examples is None.
SYNTHETIC_DEFAULT_SIZE = {"train": 7473, "test": 1319}


def extract_gold(answer: str) -> str | None:
    """Final answer of a GSM8K answer text: the line after the last "####", without commas.

    Answers with no "####" (other datasets store just the number) count as their own gold when
    they are a single token; anything else has no usable gold and returns None.
    """
    if "####" in answer:
        tail = answer.rsplit("####", 1)[1].strip()
        tail = tail.splitlines()[0] if tail else ""
    else:
        tail = answer.strip()
        if not tail or any(c.isspace() for c in tail):
            return None
    gold = tail.replace(",", "").strip()
    return gold or None


def _not_utf8(path: str, data: bytes, exc: UnicodeDecodeError, lineno: int | None = None) -> ValueError:
    """Where the first bad byte is, in terms a user can find in an editor. data: the whole file,
    or (with lineno) just that line."""
    at = exc.start
    line = lineno if lineno is not None else data.count(b"\n", 0, at) + 1
    column = at - data.rfind(b"\n", 0, at)  # 1-based: rfind gives -1 on the first line
    return ValueError(f"{path}:{line} is not UTF-8 (byte 0x{data[at]:02x} at column {column}); re-save the file "
                      "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, "rb") as f:  # decoded line by line so a bad byte is reported with its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e, lineno=lineno) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno} is a {type(row).__name__}, expected a JSON object per line")
            rows.append(row)
    return rows


def _read_json(path: str, split: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    # Accept a list of rows, or {split: [rows]} / {"data": [rows]} as some exports write.
    if isinstance(data, dict):
        for key in (split, "data"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path} must hold a JSON list of objects (or {{{split!r}: [...]}}); got another shape")
    return data


def _read_file(path: str, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    if path.endswith(".jsonl"):
        rows = _read_jsonl(path)
    elif path.endswith(".json"):
        rows = _read_json(path, split)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.to_pylist(), list(table.column_names)
    columns: dict[str, None] = {}  # ordered union of keys, as rows may differ
    for r in rows:
        columns.update(dict.fromkeys(r))
    return rows, list(columns)


def _load_hub(name: str, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    import datasets

    config = "main" if name.endswith("gsm8k") else None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub raises many types (connection, offline, not found)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"could not load dataset {name!r} split {split!r} from the Hugging Face hub or its cache "
            f"({type(e).__name__}: {first[:200]}); when offline and not cached, pass a local "
            f".jsonl/.json/.parquet file or source='synthetic'"
        ) from None
    return ds.to_list(), list(ds.column_names)


def load_examples(
    source: str,
    split: str,
    num_examples: int | None,
    seed: int,
    difficulty: int,
    question_key: str = "question",
    answer_key: str = "answer",
) -> list[dict[str, Any]]:
    """Examples {question, answer, gold, **other columns} from one source.

    source: "synthetic" (`make_problems(n, seed, difficulty, split)`, n defaulting to the GSM8K
      split size), a local .jsonl / .json / .parquet file (a file is one split: `split` only
      selects a key of a {split: [...]} JSON file), or a Hugging Face dataset name such as
      "openai/gsm8k" (config "main" for names ending in gsm8k).
    num_examples: for files/hub datasets, a subset of that many valid rows chosen with `seed`
      (kept in source order); None keeps all.
    question_key / answer_key: source columns renamed to "question" / "answer".
    Rows with an empty question, a missing answer or no final answer are skipped and counted.
    """
    if num_examples is not None and num_examples <= 0:
        raise ValueError(f"num_examples must be a positive int or None, got {num_examples}")
    if source == "synthetic":
        n = num_examples if num_examples is not None else SYNTHETIC_DEFAULT_SIZE.get(split)
        if n is None:
            raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
        rows = make_problems(n, seed, difficulty, split)
        return [dict(r, gold=extract_gold(r["answer"])) for r in rows]

    if os.path.isdir(source):
        raise ValueError(f"{source} is a directory; pass a .jsonl/.json/.parquet file inside it")
    if os.path.exists(source) or source.endswith(FILE_SUFFIXES):
        if not os.path.exists(source):
            raise ValueError(
                f"data file not found: {source}; check the path, or use source='synthetic' "
                f"or a hub name like 'openai/gsm8k'"
            )
        if not source.endswith(FILE_SUFFIXES):
            raise ValueError(f"unsupported data file {source}; use one of {', '.join(FILE_SUFFIXES)}")
        rows, columns = _read_file(source, split)
    else:
        rows, columns = _load_hub(source, split)

    if not rows:
        raise ValueError(f"{source} ({split}) has no rows; point source at a non-empty dataset")
    for key, arg in ((question_key, "question_key"), (answer_key, "answer_key")):
        if key not in columns:
            raise ValueError(
                f"column {key!r} not found in {source}; found columns: {columns}; set {arg} to one of them"
            )

    examples, no_question, no_answer = [], 0, 0
    for row in rows:
        q, a = row.get(question_key), row.get(answer_key)
        if not isinstance(q, str) or not q.strip():
            no_question += 1
            continue
        a = str(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a
        gold = extract_gold(a) if isinstance(a, str) else None
        if gold is None:
            no_answer += 1
            continue
        ex = {k: v for k, v in row.items() if k not in (question_key, answer_key)}
        ex.update(question=q, answer=a, gold=gold)
        examples.append(ex)
    if no_question or no_answer:
        logger.warning(
            "%s: skipped %d of %d rows (%d without a question, %d without an answer after '####')",
            source, no_question + no_answer, len(rows), no_question, no_answer,
        )
    if not examples:
        raise ValueError(
            f"no usable rows in {source}: all {len(rows)} lack a question or a '#### N' answer in "
            f"columns {question_key!r}/{answer_key!r}"
        )
    if num_examples is not None and num_examples < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), num_examples))
        examples = [examples[i] for i in keep]
    return examples


def build_user_message(question: str, instruction: str) -> str:
    """The user turn: the question, a newline, then the instruction (just the question if empty)."""
    return f"{question}\n{instruction}" if instruction else question


def render_prompts(
    examples: list[dict[str, Any]],
    tokenizer: Any,
    instruction: str = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
    max_prompt_length: int = 512,
    tools: list[dict] | None = None,
) -> tuple[list[dict[str, Any]], list[str], list[list[int]], int]:
    """Chat-format each example; drop prompts over max_prompt_length tokens.

    With a chat template: messages = [system (if given), user=build_user_message(...)], rendered
    with add_generation_prompt=True and tokenized with add_special_tokens=False because the
    template already writes BOS/role tokens. Without one (base models): the text is
    "{system}\n\n" (if given) + "{question}\n{instruction}\n", tokenized with the tokenizer's
    own special tokens (e.g. BOS), since nothing else adds them.
    `tools`: function schemas (ToolSet.descriptions()) for a template with tool support, which
    places them in the prompt itself; templates without it ignore them.
    Returns (kept_examples, prompt_texts, prompt_ids, num_dropped), the first three aligned.
    """
    if max_prompt_length <= 0:
        raise ValueError(f"max_prompt_length must be positive, got {max_prompt_length}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if not has_template:
        logger.warning("tokenizer has no chat_template; using plain 'question\\ninstruction\\n' prompts")

    kept, texts, ids, lengths_dropped = [], [], [], []
    for ex in examples:
        user = build_user_message(ex["question"], instruction)
        if has_template:
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages.append({"role": "user", "content": user})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 **({"tools": tools} if tools else {}))
            tok_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = (f"{system_prompt}\n\n" if system_prompt else "") + user + "\n"
            tok_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(tok_ids) > max_prompt_length:
            lengths_dropped.append(len(tok_ids))
            continue
        kept.append(ex)
        texts.append(text)
        ids.append(list(tok_ids))

    if lengths_dropped:
        if not kept:
            raise ValueError(
                f"all {len(examples)} prompts exceed max_prompt_length={max_prompt_length} tokens "
                f"(shortest {min(lengths_dropped)}); raise max_prompt_length"
            )
        logger.warning(
            "dropped %d of %d prompts longer than max_prompt_length=%d tokens (longest %d)",
            len(lengths_dropped), len(examples), max_prompt_length, max(lengths_dropped),
        )
    return kept, texts, ids, len(lengths_dropped)
