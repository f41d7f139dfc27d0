"""The chat page of `slmforge serve` in a real browser: Debian's headless Chromium, driven by selenium.

A tiny bundle (the embedded SmolLM2 GGUF, a tiny word-level embedder, four documents) is served by
the real server with an API key. The page must ask for the key and keep it in the tab only, stream
an answer with numbered sources, open a cited passage, store a rating in telemetry, show "not in the
documents" for an off-topic question, and survive bad input (empty, 100k characters, a connection
closed mid-answer) with the server healthy and telemetry consistent.

Chromium is installed by `make test` where it can be (root + apt-get); elsewhere this file skips and
says why. ``SLMFORGE_PAGE_BUNDLE`` serves another bundle (the docs' screenshots use the real one) and
``SLMFORGE_PAGE_SHOTS`` names a folder for PNG screenshots.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import CORPUS
from tests.runtime_fixtures import build_tiny_embedder, make_export_dir, real_gguf, small_corpus
from tests.serve_helpers import serving

KEY = "page-test-key"
ANSWER_TIMEOUT_S = 900  # generation on a shared 2-core machine can be slow; never a speed assertion


def _browser_or_skip() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver on this machine: 'apt-get install chromium chromium-driver' "
                    "(make test installs them when run as root where apt-get exists)")
    return chromium, driver


@pytest.fixture(scope="module")
def page_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("SLMFORGE_PAGE_BUNDLE")
    if prebuilt:
        return Path(prebuilt)
    from slmforge.runtime.bundle.build import build_bundle

    root = tmp_path_factory.mktemp("page")
    docs = small_corpus(CORPUS, root / "docs")
    embedder = build_tiny_embedder(root / "emb" / "embedder", [docs])
    export = make_export_dir(root / "export", real_gguf(), embedder)
    build_bundle(export, [docs], root / "bundle", progress=False, max_tokens=24, n_ctx=1024)
    return root / "bundle"


@pytest.fixture(scope="module")
def served(page_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("page-telemetry") / "t.db"
    with serving(page_bundle, "--api-key", KEY, "--k", "2", "--telemetry", str(db), "--no-cache") as srv:
        srv.telemetry = db  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def browser(served):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="slmforge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,950"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver, name: str) -> None:
    folder = os.environ.get("SLMFORGE_PAGE_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)


def _turns(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "article.turn")


def _ask(driver, question: str | None, via_script: bool = False):
    """Type (or set, for huge text) a question, press Ask; returns the new turn element."""
    from selenium.webdriver.common.by import By

    before = len(_turns(driver))
    box = driver.find_element(By.ID, "question")
    if via_script:
        driver.execute_script("arguments[0].value = arguments[1];", box, question)
    else:
        box.clear()
        box.send_keys(question)
    driver.find_element(By.ID, "send").click()
    return _wait(driver, lambda d: _turns(d)[before] if len(_turns(d)) > before else False, 30, "no new turn")


def _rows(db: Path) -> tuple[list[dict], list[dict]]:
    from slmforge.runtime.telemetry.store import TelemetryStore

    store = TelemetryStore(db, readonly=True)
    try:
        return store.requests(), store.feedback()
    finally:
        store.close()


def _healthy(url: str) -> bool:
    return httpx.get(url + "/health", timeout=30).json()["status"] == "ok"


def test_page_asks_streams_cites_rates_and_survives_bad_input(served, browser, page_bundle: Path):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(served.url + "/")
    # the server has --api-key: the page asks for it at once and keeps it in this tab only
    dialog = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "dialog#key-dialog[open]"), 30, "no key dialog")
    dialog.find_element(By.ID, "key-input").send_keys(KEY)
    dialog.find_element(By.ID, "key-save").click()
    _wait(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog#key-dialog[open]"), 10, "dialog stays")
    assert driver.execute_script("return sessionStorage.getItem('slmforge.apiKey')") == KEY
    assert driver.execute_script("return localStorage.length") == 0
    assert driver.execute_script("return document.cookie") == ""
    assert driver.find_element(By.ID, "model-name").text == served.model

    # a question streams: text shows while the answer is still being written
    turn = _ask(driver, "How do I copy a file with shutil?")
    streamed = _wait(driver, lambda d: turn.find_element(By.CSS_SELECTOR, ".answer-text.streaming").text.strip()
                     or False, ANSWER_TIMEOUT_S, "no streamed text")
    assert streamed
    _wait(driver, lambda d: turn.get_attribute("data-done") != "false", ANSWER_TIMEOUT_S, "answer never finished")
    assert turn.get_attribute("data-done") == "true", turn.text
    answer = turn.find_element(By.CSS_SELECTOR, ".answer-text").text
    assert answer.strip() and answer.startswith(streamed.rstrip("▍").strip()[:10])
    rid = turn.get_attribute("data-request-id")
    assert rid.startswith("chatcmpl-")
    sources = turn.find_elements(By.CSS_SELECTOR, ".sources button.source")
    assert sources, "no numbered sources under the answer"

    # the first source opens the cited passage: its document, section and text from the bundle's index
    chunk_id = int(sources[0].get_attribute("data-chunk"))
    sources[0].click()
    panel = _wait(driver, lambda d: d.find_element(By.ID, "passage") if d.find_element(By.ID, "passage").is_displayed()
                  and d.find_element(By.ID, "passage").get_attribute("data-chunk") else False, 30, "no passage")
    from slmforge.runtime.index.store import RagIndex

    with RagIndex(page_bundle / "rag.db", readonly=True) as index:
        expected = index.passage(chunk_id)
    assert panel.get_attribute("data-chunk") == str(chunk_id)
    assert expected["source"] in panel.find_element(By.ID, "passage-title").text
    assert panel.find_element(By.ID, "passage-section").text == expected["heading"]
    shown = panel.find_element(By.ID, "passage-text").get_attribute("textContent")
    assert shown == expected["text"]
    _shot(driver, "serve-page.png")
    panel.find_element(By.ID, "passage-close").click()

    # thumbs down goes to the feedback path and lands in telemetry with the answer's request id
    turn.find_element(By.CSS_SELECTOR, "button.thumb.down").click()
    _wait(driver, lambda d: turn.get_attribute("data-rated") == "bad", 30, "rating not confirmed")
    _, feedback = _rows(served.telemetry)
    assert [(f["gen_ai.response.id"], f["label"]) for f in feedback] == [(rid, 0)]

    # closing the connection mid-answer (Stop) leaves the server healthy and records a 499
    turn = _ask(driver, "What does shutil.copytree do with symlinks?")
    _wait(driver, lambda d: turn.find_element(By.CSS_SELECTOR, ".answer-text").text.strip() or False,
          ANSWER_TIMEOUT_S, "no streamed text before stop")
    driver.find_element(By.ID, "stop").click()
    _wait(driver, lambda d: turn.get_attribute("data-done") == "stopped", 30, "stop not shown")
    assert _healthy(served.url)
    _wait(driver, lambda d: any(r["http.response.status_code"] == 499 for r in _rows(served.telemetry)[0]), 60,
          "no 499 row for the closed connection")

    # an off-topic question: the server still answers, and the page says it is not in the documents
    turn = _ask(driver, "What is the best pizza recipe with mozzarella?")
    _wait(driver, lambda d: turn.get_attribute("data-done") != "false", ANSWER_TIMEOUT_S, "off-topic never finished")
    assert turn.get_attribute("data-done") == "true", turn.text
    ood = turn.find_element(By.CSS_SELECTOR, ".ood")
    assert ood.is_displayed() and "Not in the documents" in ood.text
    _shot(driver, "serve-page-not-in-documents.png")

    # empty question: the page says so and sends nothing
    before = len(_turns(driver))
    driver.find_element(By.ID, "question").clear()
    driver.find_element(By.ID, "send").click()
    _wait(driver, lambda d: d.find_element(By.ID, "notice").is_displayed(), 10, "no notice for empty question")
    assert "Type a question" in driver.find_element(By.ID, "notice").text and len(_turns(driver)) == before

    # 100k characters: the server refuses it in one line, the page shows that line
    turn = _ask(driver, "why " * 25_000, via_script=True)
    _wait(driver, lambda d: turn.get_attribute("data-done") != "false", ANSWER_TIMEOUT_S, "huge question hangs")
    assert turn.get_attribute("data-done") == "error"
    assert "context" in turn.find_element(By.CSS_SELECTOR, ".error").text
    assert _healthy(served.url)

    # telemetry is consistent: one row per request, each answer's id once, the rating points at an answer
    rows, feedback = _rows(served.telemetry)
    chats = [r for r in rows if r.get("http.route") == "/v1/chat/completions"]
    codes = sorted(r["http.response.status_code"] for r in chats)
    assert codes == [200, 200, 400, 499], codes
    answered = [r["gen_ai.response.id"] for r in chats if r["http.response.status_code"] == 200]
    assert len(set(answered)) == 2 and feedback[0]["gen_ai.response.id"] in answered
    assert [r.get("error.type") for r in chats if r["http.response.status_code"] == 499] == ["client_disconnected"]
    assert any(r["http.response.status_code"] == 401 for r in rows)  # the page's first call, before the key

    # the status page reads the same telemetry: answers, latency over time, the drift verdict
    driver.get(served.url + "/status")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#cards .card"), 60, "no status cards")
    cards = driver.find_element(By.ID, "cards").text
    assert served.model in cards and "answers\n2" in cards.lower()
    assert driver.find_element(By.ID, "drift-status").text in ("fine", "re-index", "retrain", "unknown")
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-latency svg polyline")
    _shot(driver, "serve-status.png")


def test_page_files_are_local_and_the_new_reads_need_the_key(served):
    page = httpx.get(served.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, font or script from elsewhere
    for name in ("app.js", "style.css"):
        asset = httpx.get(f"{served.url}/static/{name}", timeout=30)
        assert asset.status_code == 200 and "https://" not in asset.text and "http://" not in asset.text.replace(
            "http://www.w3.org/2000/svg", "")
    for bad in ("../webui.py", "..%2Fwebui.py", "index.html", "nope.js"):
        assert httpx.get(f"{served.url}/static/{bad}", timeout=30).status_code == 404, bad
    for path in ("/v1/passages/1", "/v1/status"):
        assert httpx.get(served.url + path, timeout=30).status_code == 401, path
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(served.url + "/v1/passages/abc", headers=auth, timeout=30).status_code == 400
    assert httpx.get(served.url + "/v1/passages/99999999", headers=auth, timeout=30).status_code == 404
    status = httpx.get(served.url + "/v1/status", headers=auth, timeout=60).json()
    assert status["model"] == served.model and status["chunks"] > 0 and "drift" in status["report"]
