"""The console's Data page with a file validated in the background: a headless Chromium (Debian's package,
driven by Playwright) against an API server whose in-request validation limit is 1 KB, so the upload is
answered "uploaded" and the page shows the worker's progress until the report appears."""

import os
import time
from pathlib import Path

import pytest

from tests.api.test_files_background import write_big
from tests.support.service import free_port, spawn, wait_http

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed")
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def background_api(service, tmp_path_factory):
    env = dict(service.env, CHATFORGE_SYNC_VALIDATION_MAX_BYTES="1000")
    port = free_port()
    api = spawn(env, ["serve", "--no-worker", "--skip-model", "--port", str(port)],
                tmp_path_factory.mktemp("bgapi") / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", api)
        yield f"http://127.0.0.1:{port}"
    finally:
        api.stop()


def test_data_page_follows_a_file_validated_in_the_background(browser, background_api, service, tmp_path):
    key = service.key("console-files")
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=background_api)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("/")
    page.fill("#sign-in input[type=password]", key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
    page.goto("/#/data")
    page.wait_for_selector("#dropzone")

    path = tmp_path / "big.jsonl"
    n = write_big(path, 64)  # a few seconds of worker reading: the page polls every 1.5 s
    page.set_input_files("#upload-input", str(path))
    page.wait_for_selector("#file-status:has-text('Validating on a worker')")
    seen = set()
    end = time.monotonic() + 600
    while not page.locator("#report").count():
        assert time.monotonic() < end, "the report never appeared"
        if page.locator("#file-progress").count():
            seen.add(page.get_attribute("#file-progress", "value"))
        page.wait_for_timeout(200)
    assert len(seen) >= 2, seen  # the progress bar moved while the worker read the file
    assert f"{n:,}".replace(",", "") in page.inner_text("#report").replace(",", "").replace("\u202f", "").replace("\u00a0", "")
    page.goto("/#/data")
    page.wait_for_selector("#files-title")
    assert "processed" in page.inner_text("table")
    assert not errors, errors
    ctx.close()
