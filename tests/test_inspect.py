"""python -m grpo_trainer.inspect: the sample log as one self-contained page, checked in a real
headless Chromium (Playwright's, else the distribution's chromium-headless-shell: scripts/test.sh
installs one) by the colours of the pixels on screen."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from grpo_trainer.inspect import COLOURS, InspectError, load_samples, main, render

TOKENS = ["The", " answer", " is", " 4", ".\n", "####", " 4"]


def _sample(step: int, adv: float) -> dict:
    return {"step": step, "question": "What is 2+2?", "gold": "4", "completion": "".join(TOKENS),
            "reward": 1.0 if adv > 0 else 0.0, "truncated": False, "prompt": "<|im_start|>user\nWhat is 2+2?</s>",
            "group": 0, "components": {"gsm8k": 1.0 if adv > 0 else 0.0, "format": None}, "parsed": "4",
            "correct": adv > 0, "formatted": True, "advantage": adv, "tokens": TOKENS,
            "token_advantages": [adv] * 7, "engine_logp": [-0.5] * 7,
            # |engine - trainer| is 1.0 (the step's largest) at token 3 only, 0.1 at token 1
            "trainer_logp": [-0.5, -0.6, -0.5, -1.5, -0.5, -0.5, -0.5],
            "entropy": [0.1, 0.5, 1.0, 2.0, 0.3, 0.2, 0.1], "clipped": [False, False, True] + [False] * 4,
            "loss_mask": [True] * 6 + [False]}


@pytest.fixture
def run(tmp_path) -> Path:
    # Two steps, each a right answer (advantage +1) and a wrong one (-1) with the same tokens.
    rows = [_sample(step, adv) for step in (2, 4) for adv in (1.0, -1.0)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "que')
    return tmp_path


def test_page_is_self_contained_and_holds_every_step(run, capsys):
    steps = load_samples(run)
    assert list(steps) == [2, 4] and [len(v) for v in steps.values()] == [2, 2]  # torn last line ignored
    page = render(steps, "run")
    # No address to fetch anything from: styles, script and data are inline.
    assert "http" not in page and "src=" not in page and "href" not in page
    assert page.count("<script") == 2 and "</s>" not in page  # the prompt's "</s>" is escaped in the JSON
    assert main([str(run), "--step", "2", "--output", str(run / "p.html")]) == 0
    assert '"initial": 2' in (run / "p.html").read_text()
    assert main([str(run), "--step", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: step 3 has no logged samples; logged steps: 2, 4"]
    with pytest.raises(InspectError, match="nowhere not found: pass a run directory"):
        load_samples(run / "nowhere")


def _browser():
    sync = pytest.importorskip("playwright.sync_api", reason="playwright (extra `test`) not installed")
    pw = sync.sync_playwright().start()
    try:
        return pw, pw.chromium.launch()
    except Exception:  # Playwright's own Chromium not downloaded: the distribution's, if there is one
        for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
            if shutil.which(name):
                return pw, pw.chromium.launch(executable_path=shutil.which(name))
        pw.stop()
        pytest.skip("no headless Chromium: python -m playwright install chromium, or apt install chromium-headless-shell")


def _count(png: bytes, rgb: tuple[int, int, int], tol: int = 6) -> int:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for px in img.getdata() if all(abs(a - b) <= tol for a, b in zip(px, rgb)))


def test_tokens_are_coloured_on_screen(run):
    main([str(run)])
    pw, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.goto((run / "inspect.html").as_uri())
        assert page.locator("#step").input_value() == "4"  # the last step first
        shot = page.screenshot()
        pos, neg = _count(shot, COLOURS["positive"]), _count(shot, COLOURS["negative"])
        # Each completion's 7 tokens at full strength (|advantage| = the step's largest); the two
        # completions are the same tokens, so the same area, +-1 % for anti-aliased text inside.
        assert pos > 1500 and neg > 1500
        assert abs(pos - neg) < 0.01 * pos
        assert _count(shot, COLOURS["entropy"]) == 0
        assert page.locator("main .tok.clipped").count() == 2 and page.locator("main .tok.masked").count() == 2

        page.check("input[value=gap]")  # the switch: only token " 4" has the largest gap
        shot = page.screenshot()
        assert _count(shot, COLOURS["positive"]) == 0
        gap = _count(shot, COLOURS["gap"])
        assert 0 < gap < pos / 3  # 1 of 7 tokens per completion (" 4" is narrower than the mean token)
        page.check("input[value=entropy]")
        assert _count(page.screenshot(), COLOURS["entropy"]) > 0

        page.select_option("#step", "2")  # the step picker
        assert page.locator("main p").first.inner_text() == "step 2: 2 logged samples"
        assert page.evaluate("location.hash") == "#step=2&mode=entropy"
    finally:
        browser.close()
        pw.stop()
