import json
import logging
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo_trainer.data.loader import extract_gold, load_examples

ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7", "id": 0},
    {"question": "A car costs 1,200 dollars twice. Total?", "answer": "2*1200=<<2*1200=2400>>2400\n#### 2,400", "id": 1},
    {"question": "Sam has 10 pens and loses 2. How many?", "answer": "10-2=<<10-2=8>>8\n#### 8", "id": 2},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_extract_gold():
    assert extract_gold("a\n#### 2,400") == "2400"
    assert extract_gold("x #### 5 #### -3.5 \n") == "-3.5"  # last marker wins
    assert extract_gold("42") == "42"  # bare answers (non-GSM8K sets) are their own gold
    assert extract_gold("the answer is 4") is None
    assert extract_gold("work\n####   ") is None


def test_jsonl_keeps_columns_and_gold(tmp_path):
    ex = load_examples(_write_jsonl(tmp_path / "d.jsonl", ROWS), "train", None, 0, 1)
    assert [e["gold"] for e in ex] == ["7", "2400", "8"]
    assert [e["id"] for e in ex] == [0, 1, 2]
    assert ex[1]["answer"] == ROWS[1]["answer"]
    assert ex[0]["question"] == ROWS[0]["question"]


def test_parquet_with_renamed_columns(tmp_path):
    table = pa.Table.from_pylist([{"problem": r["question"], "solution": r["answer"], "level": i}
                                  for i, r in enumerate(ROWS)])
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    ex = load_examples(str(path), "test", None, 0, 1, question_key="problem", answer_key="solution")
    assert [e["gold"] for e in ex] == ["7", "2400", "8"]
    assert set(ex[2]) == {"question", "answer", "gold", "level"}
    assert ex[2]["level"] == 2


def test_json_list_and_split_dict(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"test": ROWS[:1], "train": ROWS}))
    assert len(load_examples(str(tmp_path / "a.json"), "train", None, 0, 1)) == 3
    only = load_examples(str(tmp_path / "b.json"), "test", None, 0, 1)
    assert [e["gold"] for e in only] == ["7"]


def test_num_examples_seeded_subset_in_order(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    a = load_examples(path, "train", 5, 3, 1)
    assert a == load_examples(path, "train", 5, 3, 1)
    golds = [int(e["gold"]) for e in a]
    assert len(golds) == 5 and golds == sorted(golds)
    assert load_examples(path, "train", 5, 4, 1) != a


def test_synthetic_source():
    ex = load_examples("synthetic", "test", 4, 0, 2)
    assert len(ex) == 4
    for e in ex:
        assert e["answer"].endswith("#### " + e["gold"])


def test_missing_file_named(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match=r"data file not found: .*nope\.jsonl; .*synthetic"):
        load_examples(missing, "train", None, 0, 1)


def test_missing_column_lists_found(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "answer": "#### 1"}])
    with pytest.raises(ValueError) as err:
        load_examples(path, "train", None, 0, 1)
    msg = str(err.value)
    assert "column 'question' not found" in msg
    assert "found columns: ['prompt', 'answer']" in msg
    assert "\n" not in msg


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="has no rows"):
        load_examples(str(path), "train", None, 0, 1)


def test_rows_without_answer_skipped_and_counted(tmp_path, caplog):
    rows = ROWS + [
        {"question": "no answer", "answer": None},
        {"question": "no marker", "answer": "it is seven"},
        {"question": "", "answer": "#### 3"},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="grpo_trainer.data.loader"):
        ex = load_examples(path, "train", None, 0, 1)
    assert len(ex) == 3  # 6 rows - 3 bad
    assert "skipped 3 of 6 rows (1 without a question, 2 without an answer" in caplog.text


def test_all_rows_bad(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": ""}] * 2)
    with pytest.raises(ValueError, match="no usable rows .* all 2 lack"):
        load_examples(path, "train", None, 0, 1)


def test_hub_offline_one_line_error(tmp_path):
    # Subprocess: the offline switch is read when `datasets` is imported.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path))
    code = (
        "from grpo_trainer.data import load_examples\n"
        "try:\n    load_examples('openai/gsm8k', 'train', None, 0, 1)\n"
        "except ValueError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR")]
    assert len(line) == 1, out.stdout + out.stderr
    assert "could not load dataset 'openai/gsm8k' split 'train'" in line[0]
    assert "when offline and not cached, pass a local .jsonl/.json/.parquet file or source='synthetic'" in line[0]
