"""Table-driven checks of the built-in verifiers, called directly (in this process)."""

import dataclasses

import pytest

from grpo_trainer.rewards import (
    RewardError,
    VerifyResult,
    clean_text,
    format_verifier,
    get_verifier,
    gsm8k_fast,
    gsm8k_verifier,
    math_verifier,
    register_verifier,
)

GSM_FIELD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"

# (completion, ground truth, score, parsed, formatted)
GSM8K_STRICT = [
    ("6 * 7 = 42\n#### 42", "42", 1.0, "42", True),
    ("6 * 7 = 41\n#### 41", "42", 0.0, "41", True),
    ("The answer is 42", "42", 0.0, None, False),  # no '####'
    ("####", "42", 0.0, None, False),  # '####' with nothing after it
    ("#### 1,234", "1234", 1.0, "1234", True),
    ("#### $1,234.00.", "#### 1,234", 1.0, "1234", True),  # '$', commas, decimals, period
    ("#### 1234", "1,234", 1.0, "1234", True),
    ("#### -5", "-5", 1.0, "-5", True),
    ("#### 5", "-5", 0.0, "5", True),
    ("#### \u22125", "-5", 1.0, "-5", True),  # Unicode minus sign
    ("#### 3.50", "3.5", 1.0, "3.5", True),
    ("#### 3.5", "#### 4", 0.0, "3.5", True),
    ("#### 12 apples.", "12", 1.0, "12", True),  # trailing units
    ("#### 50%", "50", 1.0, "50", True),
    ("#### 3/4", "0.75", 1.0, "0.75", True),  # exact fraction arithmetic
    ("#### 72", GSM_FIELD, 1.0, "72", True),  # ground truth is a whole GSM8K answer field
    ("#### 7", GSM_FIELD, 0.0, "7", True),
    ("#### 42\nthen 5 + 2 = 7", "42", 0.0, None, False),  # '####' answer not final
    ("#### 41\nfix: #### 42", "42", 1.0, "42", True),  # the LAST '####' counts
    ("#### 42\n</answer>", "42", 1.0, "42", True),  # digit-free text after it is fine
]

GSM8K_FLEXIBLE = [
    ("So she has 42 apples.", "42", 1.0, "42", True),
    ("48/2 = 24, then 24 + 48 = 72.", GSM_FIELD, 1.0, "72", True),
    ("no numbers here", "42", 0.0, None, False),
    ("It costs $1,234.", "1234", 1.0, "1234", True),
    ("the result is -3", "-3", 1.0, "-3", True),
    ("first 42, then 41", "42", 0.0, "41", True),  # last number wins
    ("48-24=24", "24", 1.0, "24", True),  # '-' after a digit is minus, not a sign
    ("#### 42", "42", 1.0, "42", True),
]


@pytest.mark.parametrize("completion,truth,score,parsed,formatted", GSM8K_STRICT)
def test_gsm8k_strict(completion, truth, score, parsed, formatted):
    assert gsm8k_verifier(completion, truth, mode="strict") == VerifyResult(score, parsed, formatted)


@pytest.mark.parametrize("completion,truth,score,parsed,formatted", GSM8K_FLEXIBLE)
def test_gsm8k_flexible(completion, truth, score, parsed, formatted):
    assert gsm8k_verifier(completion, truth, mode="flexible") == VerifyResult(score, parsed, formatted)


def test_gsm8k_falls_back_to_math_verify_only_where_numbers_cannot_decide():
    # "\frac{3}{4}" is not a plain number: the regex path abstains, math-verify says 3/4 == 0.75.
    assert gsm8k_fast("#### \\frac{3}{4}", "0.75") is None
    assert gsm8k_verifier("#### \\frac{3}{4}", "0.75") == VerifyResult(1.0, "\\frac{3}{4}", True)
    assert gsm8k_verifier("#### \\frac{2}{3}", "0.75").score == 0.0
    # Plain numbers never reach math-verify: the fast path decides.
    assert gsm8k_fast("#### 3/4", "0.75") == VerifyResult(1.0, "0.75", True)


def test_gsm8k_over_long_number_is_not_read():
    # 41+ character tokens are refused (no int() of thousands of digits): score 0.
    assert gsm8k_verifier("#### " + "4" * 60, "4" * 60).score == 0.0


def test_gsm8k_bad_mode():
    with pytest.raises(RewardError, match="mode must be one of"):
        gsm8k_verifier("#### 1", "1", mode="strcit")


# (completion, ground truth, score, formatted)
MATH_CASES = [
    ("So the answer is $\\boxed{42}$.", "42", 1.0, True),
    ("So the answer is $\\boxed{41}$.", "42", 0.0, True),
    ("The answer is $\\frac{3}{4}$", "0.75", 1.0, True),  # fraction vs decimal
    ("$\\boxed{0.75}$", "3/4", 1.0, True),
    ("$\\boxed{1,234}$", "#### 1,234", 1.0, True),  # thousands separators, GSM8K field
    ("So it is $50\\%$", "0.5", 1.0, True),  # percentage
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{2}{4}", 1.0, True),  # equivalent forms
    ("$\\boxed{x^2+2x+1}$", "(x+1)^2", 1.0, True),
    ("$\\boxed{-7}$", "-7", 1.0, True),
    ("$\\boxed{7}$", "-7", 0.0, True),
    ("reasoning\n#### 72", GSM_FIELD, 1.0, True),
    # math-verify alone would take "answer is <<8=8>>8"; the final '####' line wins.
    ("The answer is <<8=8>>8.\n#### 9", "9", 1.0, True),
    ("#### 42\nso the answer is $\\boxed{7}$", "42", 0.0, True),  # '####' not final
    ("no answer at all", "42", 0.0, False),
]


@pytest.mark.parametrize("completion,truth,score,formatted", MATH_CASES)
def test_math(completion, truth, score, formatted):
    r = math_verifier(completion, truth)
    assert (r.score, r.formatted) == (score, formatted)
    assert (r.parsed is not None) == formatted


# (completion, kwargs, score, parsed)
FORMAT_CASES = [
    ("work\n#### 42", {}, 1.0, "42"),
    ("#### -3.5", {}, 1.0, "-3.5"),
    ("#### $12", {}, 1.0, "$12"),
    ("the answer is 42", {}, 0.0, None),
    ("#### forty-two", {}, 0.0, None),
    ("#### 42\nnext step 7", {}, 0.0, None),  # the '####' line is not final
    ("<think>6*7</think><answer>42</answer>", {"style": "think_answer"}, 1.0, "42"),
    ("  <think>a</think>\n<answer> 42 </answer>\n", {"style": "think_answer"}, 1.0, "42"),
    ("<answer>42</answer>", {"style": "think_answer"}, 0.0, None),
    ("<think>a</think>", {"style": "think_answer"}, 0.0, None),
    ("<answer>1</answer><think>a</think>", {"style": "think_answer"}, 0.0, None),
    ("<think>a</think><answer>42</answer> more", {"style": "think_answer"}, 0.0, None),
    ("<think><think>a</think><answer>1</answer>", {"style": "think_answer"}, 0.0, None),
    ("pre <think>a</think><answer>1</answer>", {"style": "think_answer"}, 0.0, None),
    # The prompt already opened <think>: the completion continues inside it.
    ("a</think><answer>4</answer>", {"style": "think_answer", "think_opened": True}, 1.0, "4"),
    ("<think>a</think><answer>4</answer>", {"style": "think_answer", "think_opened": True}, 0.0, None),
    # A 20 000-char <think> (5x max_chars) still counts: both ends are looked at.
    ("<think>" + "x" * 20_000 + "</think><answer>4</answer>", {"style": "think_answer"}, 1.0, "4"),
]


@pytest.mark.parametrize("completion,kwargs,score,parsed", FORMAT_CASES)
def test_format(completion, kwargs, score, parsed):
    assert format_verifier(completion, "", **kwargs) == VerifyResult(score, parsed, score == 1.0)


def test_format_bad_style():
    with pytest.raises(RewardError, match="style must be one of"):
        format_verifier("x", "", style="xml")


def test_registry_lookup_and_errors():
    assert get_verifier("gsm8k") is gsm8k_verifier
    assert get_verifier("math") is math_verifier
    with pytest.raises(RewardError) as e:
        get_verifier("gsm9k")
    msg = str(e.value)
    assert "\n" not in msg and "format, gsm8k, math" in msg
    with pytest.raises(RewardError, match="already registered"):
        register_verifier("gsm8k")(lambda c, g, **k: VerifyResult(1.0))
    with pytest.raises(RewardError, match="reserved"):
        register_verifier("a:b")


def test_verify_result_is_frozen():
    r = VerifyResult(1.0, "42", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.score = 0.0  # type: ignore[misc]


def test_clean_text():
    assert clean_text("a\x00b\x00") == "ab"
    assert clean_text("x\ud800y") == "x?y"  # lone surrogate replaced, text stays encodable
    assert clean_text("0123456789", max_chars=4) == "6789"
    assert clean_text(None) == ""
    # Tail of 1 MB: exactly max_chars characters, all from the end.
    assert clean_text("a" * 1_000_000 + "END", max_chars=10) == "aaaaaaaEND"
    assert clean_text("HEAD" + "m" * 100 + "TAIL", max_chars=4, keep_head=True) == "HEAD\nTAIL"
