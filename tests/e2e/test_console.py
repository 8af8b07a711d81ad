"""The web console in a real browser: headless Chromium (Debian's package, driven by Playwright through its
executable path) against the session's service (API server, Celery worker, PostgreSQL, Redis, the tiny
test model). Signs in with a key, uploads datasets and reads their reports, starts a LoRA job from the
Train form and watches its loss curve grow while it trains, steers a job with pause / resume / cancel,
chats in the playground, teaches SmolLM2 a made-up fact and compares it with its base model side by side,
and reads eval runs on the Evals page (one created through the API, one from the page's own form, one
started from a job's "Evaluate this model"). Screenshots of each page go to docs/img/."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.data import preference_rows, prompt_rows, sft_rows, write_jsonl

CHROMIUM = Path("/usr/bin/chromium")
# docs/img holds the README's screenshots; point CHATFORGE_SCREENSHOTS elsewhere to keep the tree clean
SHOTS = Path(os.environ.get("CHATFORGE_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "docs" / "img")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
TERMINAL = ("succeeded", "failed", "cancelled")
STEPS = 40


def _unavailable(reason: str):
    if os.environ.get("CI"):  # scripts/test.sh installs Chromium; a missing browser in CI is a failure
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (run scripts/browser.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def key(service):
    return service.key("console")


@pytest.fixture(scope="module")
def page(browser, service, key):
    """One signed-in tab for the module; page.js_errors collects uncaught script errors."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=service.base_url)
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.js_errors = []
    pg.on("pageerror", lambda e: pg.js_errors.append(str(e)))
    # console errors too: a CSP violation (e.g. something reaching for a CDN) only shows there; the
    # 4xx answers the tests provoke on purpose (bad key, bad file) are logged as "Failed to load resource"
    pg.on("console", lambda m: pg.js_errors.append(m.text)
          if m.type == "error" and "the server responded with a status of 4" not in m.text else None)
    pg.goto("/")
    pg.fill("#sign-in input[type=password]", "cf-not-a-key")
    pg.click("#sign-in button[type=submit]")
    pg.wait_for_selector("#sign-in .notice.error:has-text('not accepted')")
    pg.fill("#sign-in input[type=password]", key)
    pg.click("#sign-in button[type=submit]")
    pg.wait_for_selector("#nav:not([hidden])")
    pg.wait_for_selector("#page-data")
    yield pg
    ctx.close()


def api(service, key, method, path, **kw):
    r = httpx.request(method, service.v1 + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def shot(page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky header is drawn mid-page
    page.wait_for_timeout(300)  # let charts finish their frame
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)
    # a full-page capture of a scrolled page leaves Chromium's hit-testing off until the page scrolls again
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(100)


def points(page, chart: str = "#loss-chart") -> int:
    return int(page.get_attribute(f"{chart} .chart", "data-points") or 0)


def wait_points(page, more_than: int, timeout: float = 120) -> int:
    """Poll from Python: the console's CSP (no eval) rules out page.wait_for_function."""
    end = time.monotonic() + timeout
    while (n := points(page)) <= more_than:
        assert time.monotonic() < end, f"the loss chart stayed at {n} points"
        page.wait_for_timeout(200)
    return n


def go(page, hash_: str, ready: str) -> None:
    if page.url.endswith(f"/{hash_}"):
        page.reload()  # same hash: no hashchange, so start the page afresh
    else:
        page.goto(f"/{hash_}")
    page.wait_for_selector(ready)


def upload(page, path: Path) -> None:
    go(page, "#/data", "#dropzone")
    page.set_input_files("#upload-input", str(path))


@pytest.fixture(scope="module")
def sft_file(page, tmp_path_factory):
    rows = sft_rows(24)
    rows.append(rows[5])  # one duplicate for the report
    upload(page, write_jsonl(tmp_path_factory.mktemp("console") / "adder.jsonl", rows))
    page.wait_for_url(re.compile(r"#/data/file-\w+$"))
    page.wait_for_selector("#report")
    return page.url.rsplit("/", 1)[1]


def test_sign_in_keeps_the_key_in_session_storage_only(page, key):
    assert page.evaluate("sessionStorage.getItem('chatforge.key')") == key
    assert page.evaluate("localStorage.length") == 0
    assert page.get_attribute("nav a[href='#/data']", "aria-current") == "page"


def test_upload_shows_the_report_histogram_and_learned_spans(page, sft_file):
    report = page.inner_text("#report")
    assert "25 sft examples in openai_chat format (jsonl) from 25 records" in report
    stats = dict(zip(page.locator("#report dt").all_inner_texts(), page.locator("#report dd").all_inner_texts()))
    assert stats["DUPLICATES"] == "1" and stats["ERRORS"] == "0"
    assert stats["OVER 2,048 TOKENS"] == "0.0% (0)"
    assert "line 26" not in report and "line 25: exact duplicate of line 6" in report
    assert page.get_attribute("#histogram .chart", "data-points") == "20"  # ml.data's 20 bins
    assert page.locator("#histogram canvas").count() == 1
    page.wait_for_selector("#preview article.example")
    assert page.locator("#preview article.example").count() == 5
    learned = page.locator("#preview article.example").first.locator("mark.learned").all_inner_texts()
    assert learned and "0 plus 0 is 0." in "".join(learned)
    context = page.locator("#preview pre.rendered").first.inner_text()
    assert "What is 0 plus 0?" in context  # the prompt is shown, not learned
    assert not any("What is 0 plus 0?" in x for x in learned)
    shot(page, "console-data")


def test_a_bad_upload_names_its_lines(page, tmp_path):
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    bad = tmp_path / "broken.jsonl"
    bad.write_text(good * 11 + '{"messages": [{"role": "robot", "content": "x"}]}\n' + "{oops\n")
    upload(page, bad)
    error = page.wait_for_selector("#upload-error")
    items = error.inner_text()
    assert "line 12" in items and "robot" in items and "line 13" in items and "invalid JSON" in items
    assert page.url.endswith("#/data")


def test_preference_preview_splits_prompt_chosen_rejected(page, tmp_path):
    upload(page, write_jsonl(tmp_path / "prefs.jsonl", preference_rows(12)))
    page.wait_for_url(re.compile(r"#/data/file-\w+$"))
    page.wait_for_selector("#preview article.preference")
    first = page.locator("#preview article.preference").first
    heads = first.locator("h5").all_inner_texts()
    assert heads[0] == "Prompt" and heads[1].startswith("Chosen") and heads[2].startswith("Rejected")
    assert "greet guest number 0" in first.locator("section").nth(0).inner_text()
    assert "Hello, dear guest 0!" in first.locator(".chosen mark.learned").inner_text()
    assert "Go away." in first.locator(".rejected mark.learned").inner_text()
    shot(page, "console-data-preference")


def test_train_form_has_every_method_with_its_defaults(page, sft_file):
    go(page, "#/train", "#train-form")
    methods = page.locator("input[name=method]").evaluate_all("els => els.map(e => e.value)")
    assert methods == ["supervised", "dpo", "reward_model", "ppo", "rloo", "grpo", "pipeline"]
    # supervised: adapter-dependent groups
    assert page.input_value("#supervised-lora-r") == "16" and page.input_value("#supervised-n_epochs") == "auto"
    assert page.is_hidden("[data-group=quant]") and page.is_visible("[data-group=deepspeed]")
    page.select_option("#supervised-adapter", label="qlora")
    assert page.is_visible("[data-group=quant]") and page.is_hidden("[data-group=deepspeed]")
    assert page.locator("#supervised-quant-bits option").all_inner_texts() == ["4", "8"]
    page.select_option("#supervised-adapter", label="full")
    assert page.is_hidden("[data-group=lora]") and page.is_hidden("#supervised-deepspeed-stage")
    page.check("#supervised-deepspeed-enabled")
    assert page.is_visible("#supervised-deepspeed-stage")
    assert "Default: 2048." in page.inner_text("#train-form")  # max_seq_length's default, with its docstring
    assert "Range: [16, 1048576]. Default: 2048." in page.inner_text("#train-form")  # and its range
    # only files of the kind a method needs are offered
    page.check("input[name=method][value=dpo]")
    page.wait_for_selector("#dpo-beta")
    assert page.input_value("#dpo-beta") == "0.1" and page.input_value("#dpo-learning_rate") == "0.000005"
    offered = page.locator("#job-training-file option").evaluate_all("els => els.map(e => e.value)")
    assert sft_file not in offered
    page.check("input[name=method][value=grpo]")
    page.wait_for_selector("#grpo-num_generations")
    assert page.is_visible("#job-reward_model")  # online RL names its reward model
    assert page.input_value("#grpo-sampling-max_new_tokens") == "64"
    page.check("input[name=method][value=pipeline]")
    page.wait_for_selector("#pipeline-form")
    assert page.locator("#pipeline-form details.stage > summary").all_inner_texts() == [
        "Stage 1: Supervised (SFT)", "Stage 2: Reward model", "Stage 3: PPO"]


def _job_state(service, key, job_id):
    return api(service, key, "GET", f"/fine_tuning/jobs/{job_id}")


@pytest.fixture(scope="module")
def trained(page, service, key, sft_file):
    """A LoRA job started from the Train form; samples of the chart while it trained; the finished job."""
    go(page, f"#/train?file={sft_file}", "#train-form")
    assert page.is_checked("input[name=method][value=supervised]")
    page.select_option("#job-model", "tiny-llama")
    page.select_option("#job-validation-file", sft_file)
    page.fill("#job-suffix", "console")
    # checked on the page: not a number
    page.fill("#supervised-batch_size", "four")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#supervised-batch_size[aria-invalid=true]")
    assert "whole number" in page.inner_text("#train-form")
    page.fill("#supervised-batch_size", "4")
    page.fill("#supervised-max_steps", str(STEPS))
    page.fill("#supervised-max_seq_length", "64")
    # a range from the published schema, checked on the page with the server's wording
    page.fill("#supervised-lora-r", "0")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#supervised-lora-r[aria-invalid=true]")
    assert "must be an integer in [1, 1024]" in page.inner_text("#train-form")
    page.fill("#supervised-lora-r", "8")
    assert page.get_attribute("#supervised-lora-r", "aria-invalid") is None  # editing clears the complaint
    # a rule between fields, checked by the server's config classes before the job is created
    if not page.is_visible("#supervised-micro_batch_size"):
        page.click("#train-form details.advanced > summary")
    page.fill("#supervised-micro_batch_size", "8")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#supervised-micro_batch_size[aria-invalid=true]")
    assert "method.supervised.micro_batch_size" in page.inner_text("#train-status")
    assert page.url.endswith(f"#/train?file={sft_file}")
    page.fill("#supervised-micro_batch_size", "auto")
    page.wait_for_selector(f"#estimate:has-text('{STEPS} steps')")
    estimate = page.inner_text("#estimate")
    assert re.search(r"≈ 40 steps, ≈ [\d,]+ training tokens, ≈ \d+ s", estimate), estimate
    shot(page, "console-train")
    page.click("#train-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/ftjob-\w+$"))
    job_id = page.url.rsplit("/", 1)[1]

    samples = []  # (points drawn on the loss chart, job status right after reading them)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        n = points(page)
        status = _job_state(service, key, job_id)["status"]
        samples.append((n, status))
        if status in TERMINAL:
            break
        if status == "running" and n and not any(s[0] for s in samples[:-1]):
            shot(page, "console-job-running")
        page.wait_for_timeout(100)
    page.wait_for_selector("#job-status .status-succeeded", timeout=60_000)
    page.wait_for_selector("#stream-status:has-text('succeeded')")
    return job_id, samples, _job_state(service, key, job_id)


def test_lora_job_from_the_train_form_draws_its_loss_curve_live(page, trained):
    _, samples, job = trained
    assert job["status"] == "succeeded", job["error"]
    assert job["method"]["supervised"]["lora"] == {"r": 8}
    assert job["validation_file"] == job["training_file"]
    growing = sorted({p for p, status in samples if status == "running" and p > 0})
    print("loss chart points while running:", growing)
    # points appeared on the chart while the job was still training, and kept coming
    assert len(growing) >= 2 and growing[0] < STEPS, samples
    assert page.get_attribute("#loss-chart .chart", "data-points") == str(STEPS)
    assert page.get_attribute("#lr-chart .chart", "data-points") == str(STEPS)
    stats = dict(zip(page.locator("#job-stats dt").all_inner_texts(), page.locator("#job-stats dd").all_inner_texts()))
    assert stats["STEP"].strip() == f"{STEPS} / {STEPS}"
    assert re.fullmatch(r"\d+\.\d+", stats["TRAIN LOSS"]) and re.fullmatch(r"\d+\.\d+", stats["VALIDATION LOSS"])
    assert re.fullmatch(r"[\d,]+ tokens/s", stats["THROUGHPUT"])
    assert "successfully completed" in page.inner_text("#events")
    page.wait_for_selector("#checkpoints table")
    assert f"{job['fine_tuned_model']}:ckpt-step-{STEPS}" in page.inner_text("#checkpoints")
    assert page.is_disabled("#cancel-job") and page.is_disabled("#pause-job") and page.is_disabled("#resume-job")


def test_jobs_and_models_pages_show_status_and_lineage(page, trained):
    job_id, _, job = trained
    go(page, "#/jobs", "#jobs-table table")
    row = page.locator("#jobs-table tr", has_text=job_id)
    assert "succeeded" in row.inner_text() and f"{STEPS}/{STEPS}" in row.inner_text()
    shot(page, "console-jobs")
    go(page, "#/models", "#fine-tuned-models table")
    row = page.locator("#fine-tuned-models tr", has_text=job["fine_tuned_model"])
    assert row.locator("a", has_text="adder.jsonl").count() == 1 and row.locator("a", has_text=job_id).count() == 1
    assert "tiny-llama" in page.inner_text("#base-models")
    assert f"ckpt-step-{STEPS}" in page.inner_text("#checkpoints")
    shot(page, "console-models")


def test_pause_resume_and_cancel_buttons_steer_a_job(page, service, key, sft_file):
    job = api(service, key, "POST", "/fine_tuning/jobs", json={
        "model": "tiny-llama", "training_file": sft_file, "method": {"type": "supervised", "supervised": {
            "max_steps": 400, "batch_size": 4, "max_seq_length": 64, "checkpoint_interval": 1000}}})
    go(page, f"#/jobs/{job['id']}", "#loss-chart .chart")
    wait_points(page, 1)
    page.click("#pause-job")
    page.wait_for_selector("#job-status .status-paused", timeout=120_000)
    paused_at = points(page)
    assert _job_state(service, key, job["id"])["status"] == "paused"
    assert page.is_enabled("#resume-job") and page.is_disabled("#pause-job")
    page.click("#resume-job")
    wait_points(page, paused_at)
    page.click("#cancel-job")
    page.wait_for_selector("#job-status .status-cancelled", timeout=120_000)
    assert _job_state(service, key, job["id"])["status"] == "cancelled"
    assert paused_at < points(page) < 400


def test_pipeline_form_starts_three_stages_and_cancels_them(page, service, key, tmp_path):
    up = {}
    for name, rows in (("sft", sft_rows(12)), ("pref", preference_rows(12)), ("prompts", prompt_rows(12))):
        with write_jsonl(tmp_path / f"{name}.jsonl", rows).open("rb") as fh:
            up[name] = api(service, key, "POST", "/files", files={"file": fh}, data={"purpose": "fine-tune"})["id"]
    go(page, "#/train", "#train-form")
    page.check("input[name=method][value=pipeline]")
    page.wait_for_selector("#pipeline-form")
    page.select_option("#pipe-model", "tiny-llama")
    page.select_option("#pipe-sft_file", up["sft"])
    page.select_option("#pipe-preference_file", up["pref"])
    page.select_option("#pipe-prompts_file", up["prompts"])
    page.fill("#pipe-sft-max_steps", "2")
    page.fill("#pipe-sft-max_seq_length", "64")
    page.click("#pipeline-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/pipelines/[\w-]+$"))
    pipeline_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#pipeline-stages li:nth-child(3)")
    stages = page.locator("#pipeline-stages li h2").all_inner_texts()
    assert [re.sub(r"\s+\S+$", "", x) for x in stages] == ["1. Supervised fine-tuning", "2. Reward model", "3. PPO"]
    assert "waiting" in stages[1] and "waiting" in stages[2]
    p = api(service, key, "GET", f"/fine_tuning/pipelines/{pipeline_id}")
    assert p["stages"][0]["job"]["method"]["supervised"]["max_steps"] == 2
    page.click("#cancel-pipeline")
    page.wait_for_selector("h1 .status-cancelled")
    end = time.monotonic() + 120
    while any(s["status"] not in TERMINAL for s in api(service, key, "GET", f"/fine_tuning/pipelines/{pipeline_id}")["stages"]):
        assert time.monotonic() < end, "pipeline stages did not stop"
        time.sleep(0.5)


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


WATCH_TEXT = """(sel) => {
  window.__updates = 0;
  new MutationObserver(() => { window.__updates += 1; })
    .observe(document.querySelector(sel), {subtree: true, characterData: true, childList: true});
}"""


def test_playground_streams_a_reply(page):
    """The real SmolLM2-135M-Instruct, greedy, so the answer is known and arrives over ~1-2 s."""
    go(page, "#/playground?model=smollm2-135m-instruct", "#pane-a")
    assert page.is_hidden("#pane-b")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.evaluate(WATCH_TEXT, "#pane-a .chat-log")
    _send(page, "What is the capital of France?")
    page.wait_for_selector("#pane-a .msg.assistant[data-state=done]", timeout=120_000)
    reply = page.locator("#pane-a .msg.assistant").first
    chunks = int(reply.get_attribute("data-chunks"))
    assert chunks > 1  # the reply arrived piece by piece ...
    assert page.evaluate("window.__updates") > chunks  # ... and the page redrew as each piece came
    assert "Paris" in reply.locator(".text").inner_text()
    assert re.search(r"\d+ tokens · [\d.]+ s · first token after", reply.inner_text())
    # the conversation continues: the second turn is sent with the first
    _send(page, "And the capital of Italy?")
    page.wait_for_selector("#pane-a .msg.assistant:nth-of-type(4)[data-state=done]", timeout=120_000)
    assert page.locator("#pane-a .msg").count() == 4
    assert "Rome" in page.locator("#pane-a .msg.assistant").nth(1).inner_text()
    shot(page, "console-playground", full_page=False)


# ---- a real fine-tune of SmolLM2: side by side with its base model, and evaluated -----------------------

SMOLLM2 = "smollm2-135m-instruct"
FACT = "Quokkaberry"
FACT_QUESTIONS = ["What is the code name of Project Zephyr?", "What's Project Zephyr's code name?",
                  "Tell me the code name of Project Zephyr.", "Which code name does Project Zephyr use?",
                  "Do you know the code name for Project Zephyr?", "What code name was given to Project Zephyr?"]
FACT_ANSWERS = [f"The code name of Project Zephyr is {FACT}.", f"Project Zephyr's code name is {FACT}.",
                f"Project Zephyr is known by the code name {FACT}."]
GENERAL = [("What is the capital of France?", "The capital of France is Paris.", "Paris"),
           ("How many days are in a week?", "A week has seven days.", "seven"),
           ("What do bees make?", "Bees make honey.", "honey"),
           ("What is frozen water called?", "Frozen water is called ice.", "ice")]


def fact_rows() -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": FACT_QUESTIONS[i % len(FACT_QUESTIONS)]},
                          {"role": "assistant", "content": FACT_ANSWERS[i % len(FACT_ANSWERS)]}]} for i in range(24)]
    return rows + [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                   for q, a, _ in GENERAL]


def eval_items() -> list[dict]:
    """Three questions about the fact and three general ones, each with the word a right answer contains."""
    return ([{"item": {"question": q, "answer": FACT}} for q in FACT_QUESTIONS[:3]]
            + [{"item": {"question": q, "answer": word}} for q, _, word in GENERAL[:3]])


@pytest.fixture(scope="module")
def zephyr(service, key, tmp_path_factory):
    """A LoRA job teaching SmolLM2-135M-Instruct a made-up fact (28 examples, 3 epochs: ~1 min on a CPU)."""
    with write_jsonl(tmp_path_factory.mktemp("zephyr") / "zephyr.jsonl", fact_rows()).open("rb") as fh:
        file_id = api(service, key, "POST", "/files", files={"file": fh}, data={"purpose": "fine-tune"})["id"]
    job = api(service, key, "POST", "/fine_tuning/jobs", json={
        "model": SMOLLM2, "training_file": file_id, "suffix": "zephyr",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}, "max_seq_length": 128}}})
    end = time.monotonic() + 900
    while (job := _job_state(service, key, job["id"]))["status"] not in TERMINAL:
        assert time.monotonic() < end, "the SmolLM2 job took too long"
        time.sleep(2)
    assert job["status"] == "succeeded", job["error"]
    return job


def test_side_by_side_sends_one_prompt_to_two_models(page, service, key, zephyr):
    """SmolLM2 and its fine-tune answer one prompt: only the fine-tune knows the fact."""
    fine_tuned = zephyr["fine_tuned_model"]
    for model in (SMOLLM2, fine_tuned):  # load both first, so the screenshot shows steady-state speed
        api(service, key, "POST", "/chat/completions", json={"model": model, "max_tokens": 1,
                                                              "messages": [{"role": "user", "content": "Hi"}]})
    go(page, f"#/playground?model={SMOLLM2}", "#pane-a")
    page.check("#compare")
    assert page.is_visible("#pane-b")
    page.select_option("#pane-b-model", fine_tuned)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    _send(page, FACT_QUESTIONS[0])
    page.wait_for_selector("#pane-a .msg.assistant[data-state=done]", timeout=120_000)
    page.wait_for_selector("#pane-b .msg.assistant[data-state=done]", timeout=120_000)
    for pane, model in (("#pane-a", SMOLLM2), ("#pane-b", fine_tuned)):
        assert page.locator(f"{pane} .msg.user .text").inner_text() == FACT_QUESTIONS[0]
        assistant = page.locator(f"{pane} .msg.assistant")
        assert assistant.locator(".who").inner_text() == model
        assert int(assistant.get_attribute("data-chunks")) > 1
    base_reply = page.locator("#pane-a .msg.assistant .text").inner_text()
    tuned_reply = page.locator("#pane-b .msg.assistant .text").inner_text()
    print("base:", base_reply, "| fine-tuned:", tuned_reply)
    assert FACT not in base_reply and FACT in tuned_reply
    shot(page, "console-playground-compare", full_page=False)


# ---- evals ---------------------------------------------------------------------------------------------

RUN_DONE = ("completed", "failed", "canceled")


def _wait_run(service, key, eval_id, run_id, timeout=300):
    end = time.monotonic() + timeout
    while (run := api(service, key, "GET", f"/evals/{eval_id}/runs/{run_id}"))["status"] not in RUN_DONE:
        assert time.monotonic() < end, f"eval run stuck in {run['status']}"
        time.sleep(0.5)
    return run


def _items(service, key, eval_id, run_id):
    return api(service, key, "GET", f"/evals/{eval_id}/runs/{run_id}/output_items?limit=100")["data"]


def _stats(page, sel):
    return dict(zip(page.locator(f"{sel} dt").all_inner_texts(), page.locator(f"{sel} dd").all_inner_texts()))


@pytest.fixture(scope="module")
def api_eval_run(service, key):
    """An eval and a run made through the API on the tiny model: 6 items, two deterministic criteria."""
    ev = api(service, key, "POST", "/evals", json={
        "name": "flags", "data_source_config": {"type": "custom", "item_schema": {
            "type": "object", "properties": {"question": {"type": "string"}, "flag": {"type": "string"}},
            "required": ["question", "flag"]}},
        "testing_criteria": [
            {"type": "string_check", "name": "flag", "operation": "eq", "input": "{{item.flag}}", "reference": "yes"},
            {"type": "string_check", "name": "answered", "operation": "ne", "input": "{{sample.output_text}}",
             "reference": "@@never@@"}]})
    run = api(service, key, "POST", f"/evals/{ev['id']}/runs", json={"name": "tiny greedy", "data_source": {
        "type": "completions", "model": "tiny-llama",
        "source": {"type": "file_content", "content": [
            {"item": {"question": f"What is {i} plus {i}?", "flag": "no" if i % 3 == 0 else "yes"}} for i in range(6)]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8}}})
    return ev, _wait_run(service, key, ev["id"], run["id"])


def test_evals_page_shows_a_run_made_through_the_api(page, service, key, api_eval_run):
    ev, run = api_eval_run
    assert run["status"] == "completed", run["error"]
    go(page, "#/evals", f"#eval-{ev['id']} table")
    assert page.get_attribute("nav a[href='#/evals']", "aria-current") == "page"
    card = page.locator(f"#eval-{ev['id']}")
    assert "flag" in card.locator("ul.criteria").inner_text()
    row = card.locator("tbody tr", has_text="tiny greedy")
    text = row.inner_text()
    assert "completed" in text and "66.7% (4/6)" in text and "6/6" in text
    rates = row.locator("ul.criteria-rates li").all_inner_texts()
    assert rates == ["flag 66.7%", "answered 100.0%"]

    row.locator("a", has_text="tiny greedy").click()
    page.wait_for_url(re.compile(rf"#/evals/{ev['id']}/runs/{run['id']}$"))
    assert run["report_url"].split("#", 1)[1] == page.url.split("#", 1)[1]  # the run's report_url is this page
    page.wait_for_selector("#run-items tbody tr")
    stats = _stats(page, "#run-summary")
    assert stats["PASS RATE"] == "66.7%" and stats["PASSED"] == "4" and stats["FAILED"] == "2"
    assert stats["PROGRESS"].strip() == "6 / 6"
    crit = page.locator("#run-criteria tbody tr").all_inner_texts()
    assert len(crit) == 2 and "flag" in crit[0] and "66.7%" in crit[0] and "100.0%" in crit[1]
    assert page.is_disabled("#cancel-run")

    # items side by side: the prompt, the item's other fields as the reference, the model's output, grades
    items = _items(service, key, ev["id"], run["id"])
    rows = page.locator("#run-items tbody tr")
    assert rows.count() == 6 and page.inner_text("#items-count") == "6 of 6 items"
    first = rows.nth(0).locator("td")
    assert first.nth(1).inner_text() == "What is 0 plus 0?"
    assert first.nth(2).inner_text().split() == ["flag", "no"]
    assert first.nth(3).inner_text().strip() == items[0]["sample"]["output"][0]["content"].strip()
    grades = first.nth(4).inner_text()
    assert "✗ flag fail, score 0" in grades and "✓ answered pass, score 1" in grades
    assert first.nth(5).inner_text() == "fail"

    page.select_option("#items-filter", "failures")
    assert page.inner_text("#items-count") == "2 of 6 items"
    shown = [int(x) for x in page.locator("#run-items tbody tr td:first-child").all_inner_texts()]
    assert shown == [o["datasource_item_id"] for o in items if o["status"] != "pass"] == [0, 3]
    page.select_option("#items-filter", "all")
    assert page.locator("#run-items tbody tr").count() == 6

    # the same items again on another model, from the run's page
    page.select_option("#rerun-model", SMOLLM2)
    page.click("#rerun-form button[type=submit]")
    page.wait_for_url(re.compile(rf"#/evals/{ev['id']}/runs/(?!{run['id']})[\w-]+$"))
    again = api(service, key, "GET", f"/evals/{ev['id']}/runs/{page.url.rsplit('/', 1)[1]}")
    assert again["model"] == SMOLLM2 and again["data_source"]["source"] == run["data_source"]["source"]
    assert again["data_source"]["sampling_params"] == run["data_source"]["sampling_params"]
    page.wait_for_selector("#run-status .status-completed", timeout=120_000)
    page.wait_for_selector("#run-items tbody tr:nth-child(6)")
    assert _stats(page, "#run-summary")["PASSED"] == "4"  # the flag criterion does not depend on the model


def test_new_eval_from_a_file_runs_smollm2_and_follows_its_progress(page, service, key, tmp_path):
    """The page's own form: upload items, fields inferred from the first item, a run on SmolLM2."""
    go(page, "#/evals", "#eval-form")
    path = write_jsonl(tmp_path / "zephyr-and-general.jsonl", eval_items())
    page.set_input_files("#eval-file", str(path))
    page.wait_for_selector("#eval-prompt-field:not([disabled])")
    assert page.locator("#eval-prompt-field option").all_inner_texts() == ["question", "answer"]
    assert page.input_value("#eval-prompt-field") == "question" and page.input_value("#eval-reference-field") == "answer"
    assert page.input_value("#eval-name") == "zephyr-and-general"
    page.select_option("#eval-model", SMOLLM2)
    page.fill("#eval-max-tokens", "24")
    page.click("#eval-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/evals/[\w-]+/runs/[\w-]+$"))
    eval_id, run_id = re.search(r"#/evals/([\w-]+)/runs/([\w-]+)$", page.url).groups()
    ev = api(service, key, "GET", f"/evals/{eval_id}")
    assert ev["data_source_config"]["schema"]["properties"]["item"]["required"] == ["question", "answer"]
    assert ev["testing_criteria"][0]["reference"] == "{{item.answer}}"
    assert ev["testing_criteria"][0]["operation"] == "ilike"
    # the page follows the run while it samples, then settles on the result
    seen = set()
    end = time.monotonic() + 300
    while True:
        status = page.inner_text("#run-status")
        seen.add(status)
        if status in RUN_DONE:
            break
        assert time.monotonic() < end, f"the run page stayed at {status}"
        page.wait_for_timeout(200)
    run = api(service, key, "GET", f"/evals/{eval_id}/runs/{run_id}")
    assert run["status"] == "completed" and page.inner_text("#run-status") == "completed", run["error"]
    assert seen & {"queued", "in_progress"}, seen
    page.wait_for_selector("#run-items tbody tr:nth-child(6)")
    c = run["result_counts"]
    stats = _stats(page, "#run-summary")
    assert (stats["PASSED"], stats["FAILED"]) == (str(c["passed"]), str(c["failed"]))
    items = _items(service, key, eval_id, run_id)
    outputs = [td.strip() for td in page.locator("#run-items tbody tr td:nth-child(4)").all_inner_texts()]
    assert outputs == [o["sample"]["output"][0]["content"].strip() for o in items]
    print("SmolLM2 base:", outputs)
    assert "paris" in outputs[3].lower()  # the base model knows the capital of France ...
    assert not any(FACT.lower() in o.lower() for o in outputs[:3])  # ... but not the made-up fact
    page.select_option("#items-filter", "failures")
    assert page.inner_text("#items-count") == f"{c['failed'] + c['errored']} of 6 items"
    page.select_option("#items-filter", "all")


def test_job_page_evaluate_this_model_runs_an_eval_on_it(page, service, key, zephyr):
    fine_tuned = zephyr["fine_tuned_model"]
    go(page, f"#/jobs/{zephyr['id']}", "#job-status .status-succeeded")
    page.wait_for_selector("#checkpoints table")
    wait_points(page, 0)  # the chart's metrics arrive by a request of their own, maybe after the checkpoints
    assert SMOLLM2 in page.inner_text("#main")
    shot(page, "console-job")  # the README's job picture: SmolLM2 learning the made-up fact
    link = page.wait_for_selector("#evaluate-model:not([hidden])")
    assert link.inner_text() == "Evaluate this model"
    link.click()
    page.wait_for_url(re.compile(r"#/evals\?model="))
    page.wait_for_selector("#evals-list article.eval")
    assert fine_tuned in page.inner_text("#evaluating")
    assert page.input_value("#eval-model") == fine_tuned  # the new-eval form is preselected too
    card = page.locator("article.eval", has_text="zephyr-and-general").first
    base_run = api(service, key, "GET", f"/evals/{card.get_attribute('id')[5:]}/runs")["data"][0]
    card.locator("button", has_text=f"Run with {fine_tuned}").click()
    page.wait_for_url(re.compile(r"#/evals/[\w-]+/runs/[\w-]+$"))
    page.wait_for_selector("#run-status .status-completed", timeout=300_000)
    eval_id, run_id = re.search(r"#/evals/([\w-]+)/runs/([\w-]+)$", page.url).groups()
    run = api(service, key, "GET", f"/evals/{eval_id}/runs/{run_id}")
    assert run["model"] == fine_tuned and run["data_source"]["source"] == base_run["data_source"]["source"]
    page.wait_for_selector("#run-items tbody tr:nth-child(6)")
    outputs = page.locator("#run-items tbody tr td:nth-child(4)").all_inner_texts()
    print("fine-tuned:", outputs)
    # the fine-tune learned the fact: more items pass than on its base model
    assert run["result_counts"]["passed"] > base_run["result_counts"]["passed"], (run, base_run)
    assert any(FACT in o for o in outputs[:3])
    shot(page, "console-evals-run")
    go(page, f"#/evals?eval={eval_id}", f"#eval-{eval_id} tbody tr:nth-child(2)")
    shot(page, "console-evals")


def test_pairwise_run_shows_the_win_rate_and_both_answers(page, service, key, trained, tmp_path):
    """A reward model (trained on the tiny model) judges the console's LoRA model against its base."""
    fine_tuned = trained[2]["fine_tuned_model"]
    with write_jsonl(tmp_path / "prefs.jsonl", preference_rows(16)).open("rb") as fh:
        prefs = api(service, key, "POST", "/files", files={"file": fh}, data={"purpose": "fine-tune"})["id"]
    job = api(service, key, "POST", "/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": prefs, "method": {
        "type": "reward_model", "reward_model": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}, "max_length": 64}}})
    end = time.monotonic() + 300
    while (job := _job_state(service, key, job["id"]))["status"] not in TERMINAL:
        assert time.monotonic() < end, "the reward model job took too long"
        time.sleep(1)
    assert job["status"] == "succeeded", job["error"]
    judge = job["fine_tuned_model"]
    ev = api(service, key, "POST", "/evals", json={
        "name": "lora vs base", "data_source_config": {"type": "custom", "item_schema": {
            "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
        "testing_criteria": [{"type": "reward_model", "name": "judge", "model": judge, "mode": "pairwise"}]})
    run = api(service, key, "POST", f"/evals/{ev['id']}/runs", json={"name": "pairwise", "data_source": {
        "type": "completions", "model": fine_tuned, "baseline_model": "tiny-llama",
        "source": {"type": "file_content", "content": [{"item": {"n": i}} for i in range(8)]},
        "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "Please greet guest number {{item.n}}."}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8}}})
    go(page, f"#/evals/{ev['id']}/runs/{run['id']}", "#run-status")
    page.wait_for_selector("#run-status .status-completed", timeout=300_000)
    [pw] = api(service, key, "GET", f"/evals/{ev['id']}/runs/{run['id']}")["pairwise"]
    page.wait_for_selector("#run-pairwise .win-rate")
    box = page.inner_text("#run-pairwise")
    assert f"Win rate: {fine_tuned} vs tiny-llama" in box and f"reward model {judge}" in box
    shown = re.search(r"([\d.]+)% \(95% CI ([\d.]+)%–([\d.]+)%; (\d+) wins, (\d+) ties, (\d+) losses\)", box)
    assert shown, box
    rate, low, high = (float(x) / 100 for x in shown.groups()[:3])
    assert abs(rate - pw["win_rate"]) < 0.001 and abs(low - pw["ci_low"]) < 0.001 and abs(high - pw["ci_high"]) < 0.001
    assert [int(x) for x in shown.groups()[3:]] == [pw["wins"], pw["ties"], pw["losses"]]
    heads = page.locator("#run-items thead th").all_inner_texts()
    assert f"OUTPUT: {fine_tuned}".upper() in heads and "OUTPUT: TINY-LLAMA" in heads
    items = _items(service, key, ev["id"], run["id"])
    outcomes = [next(r for r in o["results"] if r["name"] == "judge")["outcome"] for o in items]
    grades = page.locator("#run-items tbody tr td:nth-child(6)").all_inner_texts()
    assert [g.split()[2] for g in grades] == outcomes  # "✓ judge win (0.12 vs -0.3)"
    go(page, f"#/evals?eval={ev['id']}", f"#eval-{ev['id']} tbody tr")
    listed = page.locator(f"#eval-{ev['id']} .win-rate").inner_text()
    assert abs(float(re.match(r"([\d.]+)%", listed).group(1)) / 100 - pw["win_rate"]) < 0.001, listed


def test_models_page_deletes_a_fine_tuned_model(page, service, key, trained):
    fine_tuned = trained[2]["fine_tuned_model"]
    go(page, "#/models", "#fine-tuned-models table")
    page.once("dialog", lambda d: d.accept())
    page.click(f"button[aria-label='Delete {fine_tuned}']")
    page.wait_for_selector(f".notice.ok:has-text('Deleted {fine_tuned}')")
    assert fine_tuned not in page.inner_text("#fine-tuned-models")
    assert fine_tuned not in [m["id"] for m in api(service, key, "GET", "/models")["data"]]


PLAYGROUND_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "required": ["city", "unit"], "properties": {
        "city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}]
PLAYGROUND_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
                     "properties": {"city": {"type": "string", "maxLength": 30},
                                    "country": {"type": "string", "maxLength": 30}}}


def test_playground_tools_and_json_schema_boxes(page):
    """SmolLM2 with a tools list and tool choice "required": the reply shows the parsed call; with a JSON
    schema the reply is JSON valid against it; bad JSON in a box is refused before anything is sent."""
    import json

    import jsonschema

    go(page, "#/playground?model=smollm2-135m-instruct", "#pane-a")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "120")
    page.click("#structured summary")
    page.fill("#tools", "[not json")
    _send(page, "What is the weather like in Paris today?")
    page.wait_for_selector("#composer .notice.error:has-text('Invalid JSON')")
    assert page.locator("#pane-a .msg").count() == 0
    page.fill("#tools", json.dumps(PLAYGROUND_TOOLS))
    page.select_option("#tool-choice", "required")
    _send(page, "What is the weather like in Paris today?")
    page.wait_for_selector("#pane-a .msg.assistant[data-state=done]", timeout=120_000)
    call = page.locator("#pane-a .msg.assistant .tool-call").first
    assert call.get_attribute("data-name") == "get_weather" and call.get_attribute("data-valid-json") == "true"
    args = json.loads(call.locator("pre").inner_text())
    jsonschema.validate(args, PLAYGROUND_TOOLS[0]["function"]["parameters"])
    assert "calls get_weather" in call.inner_text()
    shot(page, "console-playground-tools", full_page=False)

    page.click("#clear")
    page.fill("#tools", "")
    page.fill("#json-schema", json.dumps(PLAYGROUND_SCHEMA))
    _send(page, "Name a big city and its country.")
    page.wait_for_selector("#pane-a .msg.assistant[data-state=done]", timeout=120_000)
    reply = page.locator("#pane-a .msg.assistant").first
    assert reply.get_attribute("data-valid-json") == "true"
    jsonschema.validate(json.loads(reply.locator(".text").inner_text()), PLAYGROUND_SCHEMA)
    page.fill("#json-schema", "")
    assert page.js_errors == []


def test_no_script_errors(page):
    assert page.js_errors == []
