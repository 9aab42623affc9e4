"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, Selenium).

`edge-runtime serve` runs as a real process over a local cluster of three agents, with
an API key. The browser opens /dashboard without the key (the page asks for it), is
given the key through the form, and must then list every agent; opened with the key in
the URL fragment, the page takes it and removes it from the address bar. A chat
message typed into the page streams a reply in several chunks, and that reply is the
model's own answer to the same messages (asked over the API without streaming). The
server traces (`--trace`), so that request's timeline has a lane of real trace spans for
each agent, as the agents recorded them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[3]
TINYLM = ROOT / "examples" / "tinylm" / "checkpoint"
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "dashboard-test-key"
START_S = 180.0
WAIT_S = 60.0
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return (f"{path} is missing: install Debian's chromium and chromium-driver "
                    "(`make test` does so when run as root)")
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    trace_path = log_path.with_name("trace.json")
    env = {**os.environ, "EDGE_RUNTIME_API_KEY": KEY}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*CLI, "serve", str(TINYLM), "--local", "3", "--port", "0", "--max-batch", "2",
             "--max-context", "256", "--trace", str(trace_path)], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + START_S
            while not (found := re.search(r"serving \S+ at (http://\S+)/v1",
                                          log_path.read_text())):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "serve did not start:\n" + \
                    log_path.read_text()
                time.sleep(0.1)
            yield found.group(1)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = Service(executable_path=str(CHROMEDRIVER),
                      log_output=str(tmp_path_factory.mktemp("chromedriver") / "log.txt"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        logs = ""
        with contextlib.suppress(Exception):  # not every driver keeps console logs
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
        raise AssertionError(f"timed out waiting for {what}; page text:\n"
                             f"{driver.find_element('tag name', 'body').text}\n{logs}") from None


def texts(driver: Any, selector: str, attribute: str | None = None) -> list[str]:
    """Texts (or an attribute) of the elements matching `selector`, read in one go: the
    page redraws every second, so elements found one call earlier may be gone."""
    result: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), "
        "e => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent)",
        selector, attribute)
    return result


def agent_rows(driver: Any) -> list[str]:
    return texts(driver, "#agents tbody tr", "data-agent")


def expected_agents(url: str) -> list[str]:
    request = urllib.request.Request(f"{url}/dashboard/state",
                                     headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [a["name"] for a in json.loads(response.read())["agents"]]


def test_page_asks_for_the_key_then_shows_every_agent(server: str, browser: Any) -> None:
    browser.get(f"{server}/dashboard")
    form = wait_for(browser, lambda d: d.find_element("id", "key-form").is_displayed()
                    and d.find_element("id", "key-form"), "the key form")
    browser.find_element("id", "key-input").send_keys(KEY)
    browser.find_element("id", "key-save").click()
    names = expected_agents(server)
    assert len(names) == 3
    wait_for(browser, lambda d: sorted(agent_rows(d)) == sorted(names), "3 agent rows")
    assert not form.is_displayed()
    assert texts(browser, "#agents tbody .badge") == ["up", "up", "up"]
    lanes = texts(browser, "#plan .deployment .lane-name")
    assert sorted(lanes) == sorted(names)  # one lane per device
    assert "3 of 3 agents up" in browser.find_element("id", "connection").text
    links = texts(browser, "#links tbody tr[data-link]")
    assert len(links) == 3  # every pair of agents, measured by the agents themselves
    assert all(" ms" in link and "/s" in link for link in links)


def test_key_in_the_fragment_is_taken_and_removed(server: str, browser: Any) -> None:
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server}/dashboard#key={KEY}")
    wait_for(browser, lambda d: len(agent_rows(d)) == 3, "3 agent rows")
    assert "key=" not in browser.current_url


def test_chat_streams_the_models_reply(server: str, browser: Any) -> None:
    browser.get(f"{server}/dashboard#key={KEY}")
    wait_for(browser, lambda d: d.find_element("id", "chat-section").is_displayed(),
             "the chat box")
    for field, value in (("chat-max", "24"), ("chat-temperature", "0")):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(value)
    browser.find_element("id", "chat-input").send_keys("Permission is hereby")
    browser.find_element("id", "chat-send").click()
    reply = wait_for(browser, lambda d: d.find_elements(
        "css selector", ".msg.assistant[data-done='1'], .msg.error[data-done='1']"),
        "the streamed reply")[0]
    assert "error" not in (reply.get_attribute("class") or ""), reply.text
    chunks = int(reply.get_attribute("data-chunks"))
    assert chunks > 1, "the reply came in one piece, not streamed"
    body = json.dumps({"model": "checkpoint", "max_tokens": 24, "temperature": 0,
                       "messages": [{"role": "user", "content": "Permission is hereby"}]})
    request = urllib.request.Request(f"{server}/v1/chat/completions", data=body.encode(),
                                     headers={"Authorization": f"Bearer {KEY}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        expected = json.loads(response.read())["choices"][0]["message"]["content"]
    shown = browser.execute_script(
        "return document.querySelector('.msg.assistant[data-done=\"1\"]').textContent")
    assert shown == expected
    # the request shows up in the live figures and the last request's timeline
    wait_for(browser, lambda d: "prompt tokens" in d.find_element("id", "timeline").text,
             "the last request's timeline")
    # ... with the agents' own trace spans: a compute lane for every agent, each with spans
    names = expected_agents(server)
    wait_for(browser, lambda d: set(names) <= set(texts(
        d, "#timeline .trace-lane[data-lane='compute']", "data-device")),
        "a compute lane of trace spans per agent")
    blocks = browser.execute_script(
        "return Array.from(document.querySelectorAll('#timeline .trace-lane'), "
        "e => [e.getAttribute('data-device'), e.querySelectorAll('.span').length])")
    assert all(count > 0 for _, count in blocks), blocks
    assert {"allreduce"} <= set(texts(browser, "#timeline .trace-lane", "data-lane"))
    request = urllib.request.Request(f"{server}/dashboard/state",
                                     headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        last = json.loads(response.read())["last_request"]
    assert sorted(last["trace"]["devices"]) == sorted(names)
    for lane in last["trace"]["lanes"]:  # on the request's own time axis
        assert all(0 <= b["start_s"] <= b["end_s"] <= last["total_s"] + 1e-6
                   for b in lane["spans"]), lane

