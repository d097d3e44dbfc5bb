import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from grpo_trainer.data.loader import DEFAULT_INSTRUCTION, build_user_message, render_prompts

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<unk>", "<bos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ["Tom", "has", "3", "apples", ".", "How", "many", "?", "Answer", "briefly", "Be", "kind"]


def _tokenizer(chat_template=TEMPLATE):
    """Word-level tokenizer: one token per whitespace/punctuation piece, specials atomic."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[2:]})
    fast.chat_template = chat_template
    return fast


SHORT = {"question": "Tom has 3 apples. How many?", "gold": "3"}
LONG = {"question": "Tom has 3 apples. " * 10 + "How many?", "gold": "3"}


def test_user_message_form():
    assert build_user_message("Q?", "Do it.") == "Q?\nDo it."
    assert build_user_message("Q?", "") == "Q?"
    assert "####" in DEFAULT_INSTRUCTION


def test_chat_template_render_exact():
    kept, texts, ids, dropped = render_prompts([SHORT], _tokenizer(), "Answer briefly", "Be kind", 64)
    assert texts == [
        "<|system|>Be kind<|end|><|user|>Tom has 3 apples. How many?\nAnswer briefly<|end|><|assistant|>"
    ]
    vocab = _tokenizer().get_vocab()
    expect = ["<|system|>", "Be", "kind", "<|end|>", "<|user|>", "Tom", "has", "3", "apples", ".",
              "How", "many", "?", "Answer", "briefly", "<|end|>", "<|assistant|>"]
    assert ids == [[vocab[t] for t in expect]]  # 17 tokens, no <bos> added on top of the template
    assert kept == [SHORT] and dropped == 0


def test_no_system_prompt():
    _, texts, ids, _ = render_prompts([SHORT], _tokenizer(), "Answer briefly", None, 64)
    assert texts[0].startswith("<|user|>Tom has")
    assert len(ids[0]) == 13  # 17 above minus <|system|> Be kind <|end|>


def test_long_prompt_dropped_and_counted(caplog):
    # SHORT is 13 tokens; LONG is 10*5 + 3 ("How many ?") + 2 instruction + 3 markers = 58 tokens.
    with caplog.at_level(logging.WARNING, logger="grpo_trainer.data.loader"):
        kept, texts, ids, dropped = render_prompts([LONG, SHORT, LONG], _tokenizer(), "Answer briefly", None, 57)
    assert dropped == 2
    assert kept == [SHORT] and len(texts) == len(ids) == 1
    assert "dropped 2 of 3 prompts longer than max_prompt_length=57 tokens (longest 58)" in caplog.text
    _, _, ids, dropped = render_prompts([LONG], _tokenizer(), "Answer briefly", None, 58)
    assert dropped == 0 and len(ids[0]) == 58


def test_all_dropped_is_an_error():
    with pytest.raises(ValueError, match="all 1 prompts exceed max_prompt_length=5 tokens .shortest 13."):
        render_prompts([SHORT], _tokenizer(), "Answer briefly", None, 5)


def test_no_chat_template_falls_back(caplog):
    tok = _tokenizer(chat_template=None)
    with caplog.at_level(logging.WARNING, logger="grpo_trainer.data.loader"):
        _, texts, ids, _ = render_prompts([SHORT, SHORT], tok, "Answer briefly", None, 64)
    assert texts[0] == "Tom has 3 apples. How many?\nAnswer briefly\n"
    assert caplog.text.count("no chat_template") == 1
    vocab = tok.get_vocab()
    # This tokenizer has no post-processor, so add_special_tokens=True adds nothing: 10 word tokens.
    assert ids[0] == [vocab[t] for t in ["Tom", "has", "3", "apples", ".", "How", "many", "?", "Answer", "briefly"]]
