"""The chat page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium over WebDriver), served by local mode (uvicorn + the Lambda's app) in front of the
TGI-protocol fake streaming paced tokens.

What the page relies on, and where it is specified:
- fetch() exposes the body as a ReadableStream read chunk by chunk (WHATWG Fetch,
  https://fetch.spec.whatwg.org/#concept-body-stream); the events are parsed per the SSE
  framing (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
- A Content-Security-Policy refusal is reported on the console (CSP Level 3, "Report a
  violation", https://www.w3.org/TR/CSP3/#report-violation); chromedriver returns the console
  with the `goog:loggingPrefs` capability (https://developer.chrome.com/docs/chromedriver/logging).
- Retry-After in seconds (RFC 9110 section 10.2.3); 503 while the model wakes, 429 throttled
  (DESIGN 3.1).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.fakes.memory import FakeWorld, fake_world
from devkit.fakes.tgi_server import Fault, TgiServer, fixed
from rag.adapters.llm.http import HttpLLM
from tools.local_server import LocalServer, local_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="no /usr/bin/chromium + /usr/bin/chromedriver: `make test` installs Debian's chromium "
    "and chromium-driver where apt exists; elsewhere the browser test cannot run",
)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO / "build"
ANSWER = (
    "DPO needs no separate reward model: the policy's log-ratio against the reference model "
    "plays that role, so one training stage replaces two."
)
TOKEN_DELAY_S = 0.05
"""Paces the fake so the page renders the answer piece by piece (not a timing assertion)."""
WAIT_S = 60
PHONE = (390, 844)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# Records every state of the newest turn as the page renders it: (answer text, done?, notice).
RECORD_RENDERS = """
window.renders = [];
const conversation = document.getElementById("conversation");
new MutationObserver(() => {
  const turn = conversation.lastElementChild;
  if (!turn) return;
  const notice = turn.querySelector(".notice");
  window.renders.push([
    turn.querySelector(".answer").textContent,
    !turn.querySelector(".meta").hidden,
    notice.hidden ? "" : notice.textContent,
  ]);
}).observe(conversation, {subtree: true, childList: true, characterData: true, attributes: true});
"""


@pytest.fixture(scope="module")
def tgi() -> Iterator[TgiServer]:
    with TgiServer(fixed(ANSWER), token_delay_s=TOKEN_DELAY_S) as server:
        yield server


@pytest.fixture(scope="module")
def world(tgi: TgiServer) -> FakeWorld:
    llm = HttpLLM(tgi.url, connect_timeout_s=2, read_timeout_s=10)
    # No helper calls: the fake answers every call with the same text.
    return fake_world(llm=llm, env={"SELF_QUERY_ENABLED": "false", "EXPANSION_N": "1"})


@pytest.fixture(scope="module")
def server(world: FakeWorld) -> Iterator[str]:
    with LocalServer(local_app(world.deps)) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1024,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit chromedriver: selenium never looks for (or downloads) a driver or a browser.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(browser: Any) -> list[str]:
    """SEVERE console entries since the last call (CSP refusals and failed loads are SEVERE)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def open_page(browser: Any, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(f"{url}/")
    WebDriverWait(browser, WAIT_S).until(ec.element_to_be_clickable((By.ID, "send")))
    console_errors(browser)  # start each test with an empty console
    browser.execute_script(RECORD_RENDERS)


def ask(browser: Any, question: str, **fields: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for name, value in fields.items():
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "query").send_keys(question, Keys.ENTER)


def wait_for_end(browser: Any) -> Any:
    """The newest turn once it is finished (its timings shown, or its error said)."""
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(browser, WAIT_S).until(
        lambda b: b.execute_script(
            "const t = document.getElementById('conversation').lastElementChild;"
            "return t && t.querySelector('.answer').getAttribute('aria-busy') === 'false' ? t : null;"
        )
    )


def renders(browser: Any) -> list[tuple[str, bool, str]]:
    return [tuple(r) for r in browser.execute_script("return window.renders;")]


def test_the_answer_streams_in_with_its_sources_timings_and_trace_id(
    browser: Any, server: str, world: FakeWorld
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    query = browser.find_element(By.ID, "query")
    # Shift+Enter is a new line, not a send
    query.send_keys("Does DPO", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "need a reward model?")
    assert query.get_attribute("value") == "Does DPO\nneed a reward model?"
    assert browser.find_elements(By.CSS_SELECTOR, "#conversation .turn") == []

    query.send_keys(Keys.ENTER)
    turn = wait_for_end(browser)

    # The answer grew over several renders before it completed
    before_done = [text for text, done, _ in renders(browser) if not done]
    growth = [t for i, t in enumerate(before_done) if t and (i == 0 or t != before_done[i - 1])]
    assert len(growth) >= 3, growth
    assert all(len(a) < len(b) and b.startswith(a) for a, b in itertools.pairwise(growth))
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text == ANSWER
    # Sources: author, platform, score, link, and the snippet behind a toggle
    items = turn.find_elements(By.CSS_SELECTOR, ".sources li")
    assert len(items) == 3  # k's default
    trace = world.sink.events[-1]
    first = items[0].text
    assert "score" in first and " · " in first
    snippets = turn.find_elements(By.CSS_SELECTOR, ".sources details")
    assert len(snippets) == 3
    snippets[0].find_element(By.TAG_NAME, "summary").click()
    assert snippets[0].find_element(By.TAG_NAME, "p").text.strip()
    # Timings and the trace id that Opik will show
    meta = turn.find_element(By.CSS_SELECTOR, ".meta").text
    assert "first token" in meta and "total" in meta
    assert turn.find_element(By.CSS_SELECTOR, ".trace-id").text == trace["trace_id"]
    # The question stays in the conversation; the next one is added below it
    ask(browser, "And ORPO?")
    wait_for_end(browser)
    questions = [q.text for q in browser.find_elements(By.CSS_SELECTOR, ".turn .question")]
    assert questions == ["Does DPO\nneed a reward model?", "And ORPO?"]

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(1024, height)  # the whole page: conversation and question box
    browser.save_screenshot(str(SCREENSHOT_DIR / "chat-page.png"))
    browser.set_window_size(1024, 900)
    assert console_errors(browser) == []


def test_the_author_filter_and_k_reach_the_api(browser: Any, server: str, world: FakeWorld) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    ask(browser, "Qdrant latency?", author="Maxime Labonne", k="2")
    turn = wait_for_end(browser)

    trace = world.sink.events[-1]
    assert trace["input"]["author"] == "Maxime Labonne"
    assert trace["input"]["k"] == 2
    items = turn.find_elements(By.CSS_SELECTOR, ".sources li")
    assert len(items) == 2
    assert all("Maxime Labonne" in item.text for item in items)
    assert console_errors(browser) == []


def test_a_503_counts_down_from_retry_after_then_retries_once(
    browser: Any, server: str, tgi: TgiServer
) -> None:
    from selenium.webdriver.common.by import By

    tgi.queue(Fault.http_status(503, "model loading", **{"Retry-After": "2"}))
    calls_before = len(tgi.requests)
    open_page(browser, server)
    ask(browser, "Is the twin awake?")
    turn = wait_for_end(browser)

    notices = [notice for _, _, notice in renders(browser) if notice]
    countdown = [n for n in dict.fromkeys(notices) if "Retrying in" in n]
    assert [n.rsplit("Retrying in ", 1)[1] for n in countdown] == ["2 s.", "1 s.", "0 s."]
    assert "model loading" in countdown[0]
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text == ANSWER
    assert not turn.find_element(By.CSS_SELECTOR, ".notice").is_displayed()
    assert len(tgi.requests) - calls_before == 2  # the refused call and one retry
    # The 503 itself is logged by Chromium as a failed load: that one entry and nothing else
    errors = console_errors(browser)
    assert len(errors) == 1 and "503" in errors[0], errors


def test_a_second_503_is_reported_not_retried_again(
    browser: Any, server: str, tgi: TgiServer
) -> None:
    from selenium.webdriver.common.by import By

    tgi.queue(*[Fault.http_status(503, "still loading", **{"Retry-After": "1"})] * 2)
    open_page(browser, server)
    ask(browser, "Awake now?")
    turn = wait_for_end(browser)

    notice = turn.find_element(By.CSS_SELECTOR, ".notice").text
    assert "503" in notice and "still loading" in notice and "after one retry" in notice
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text == ""


def test_a_429_says_to_slow_down(browser: Any, server: str, tgi: TgiServer) -> None:
    from selenium.webdriver.common.by import By

    tgi.queue(Fault.http_status(429, "queue full", **{"Retry-After": "7"}))
    open_page(browser, server)
    ask(browser, "Again?")
    turn = wait_for_end(browser)

    notice = turn.find_element(By.CSS_SELECTOR, ".notice").text
    assert "slow down" in notice and "7 s" in notice and "queue full" in notice


def test_a_stream_error_keeps_what_arrived_and_says_what_failed(
    browser: Any, server: str, tgi: TgiServer
) -> None:
    from selenium.webdriver.common.by import By

    tgi.queue(Fault.stream_error(3))
    open_page(browser, server)
    ask(browser, "Tell me everything")
    turn = wait_for_end(browser)

    answer = turn.find_element(By.CSS_SELECTOR, ".answer").text
    assert answer and ANSWER.startswith(answer) and answer != ANSWER
    notice = turn.find_element(By.CSS_SELECTOR, ".notice").text
    assert "The answer stopped" in notice and "model_error" in notice and "kept" in notice
    assert turn.find_element(By.CSS_SELECTOR, ".sources").is_displayed()
    assert console_errors(browser) == []


def test_on_a_phone_sized_window_nothing_overflows_sideways(browser: Any, server: str) -> None:
    open_page(browser, server)
    ask(browser, "Short?")
    wait_for_end(browser)
    browser.set_window_size(*PHONE)
    try:
        widths = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
        )
        browser.save_screenshot(str(SCREENSHOT_DIR / "chat-page-phone.png"))
    finally:
        browser.set_window_size(1024, 900)
    assert widths[0] <= widths[1], widths


def test_the_policy_refuses_inline_script_and_the_console_shows_it(
    browser: Any, server: str
) -> None:
    """The console check above can fail: a CSP refusal is a SEVERE console entry."""
    open_page(browser, server)
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.body.append(s);"
    )
    assert browser.execute_script("return window.ran === undefined;")
    errors = console_errors(browser)
    assert any("Content Security Policy" in e for e in errors), errors


def test_keyless_page_then_the_key_is_asked_once_and_kept_in_the_session(
    browser: Any, world: FakeWorld
) -> None:
    """API Gateway answers a missing key with 403 (INVALID_API_KEY / MISSING_AUTHENTICATION_TOKEN
    gateway responses, here in the contract's shape); local mode's LOCAL_API_KEY does the same.
    https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-usage-plans.html"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    with LocalServer(local_app(world.deps, api_key="local-secret")) as keyed:
        open_page(browser, keyed.url)
        key_field = browser.find_element(By.ID, "api-key")
        assert not key_field.is_displayed()  # the page itself loaded with no key
        ask(browser, "With a key?")
        WebDriverWait(browser, WAIT_S).until(lambda _: key_field.is_displayed())
        key_field.send_keys("local-secret\n")
        turn = wait_for_end(browser)
        assert turn.find_element(By.CSS_SELECTOR, ".answer").text == ANSWER
        assert not key_field.is_displayed()
        ask(browser, "Still?")  # the key is reused: no second prompt
        second = wait_for_end(browser)
        assert second.find_element(By.CSS_SELECTOR, ".answer").text == ANSWER
        assert not key_field.is_displayed()
        stored = browser.execute_script("return [sessionStorage.length, localStorage.length];")
    assert stored == [1, 0]
    errors = console_errors(browser)
    assert len(errors) == 1 and "403" in errors[0], errors
    browser.execute_script("sessionStorage.clear();")
    assert json.dumps(errors).count("local-secret") == 0
