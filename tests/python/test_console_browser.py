"""The web console (issue 12, docs/console.md) driven by headless Chromium
from Debian's packages through Selenium, against a whole deployment from
conftest's `bridged_deployment`: the scripted fake model `fake-model-bash`
(it runs the `$ ` lines of the first user message as `bash` calls), a real
`control-plane serve` serving the console on its API listener, a real
`vault-bridge serve` and a real `sandbox-agent` running the calls in Docker
sandboxes. Sessions are made and driven by the official `anthropic` SDK.

In the browser: sign in with an API key; find the SDK's session in the list;
open its timeline; approve an `always_ask` call with the button and watch the
run finish without a reload (the result and the idle status arrive over the
console's SSE); XSS payloads in a tool's input and output stay text (no
script runs, no element is injected), in the page as served and as appended
live; the audit page shows the agent's checkpoint and the approval; the
agents page, and a revocation through the confirmation page shown as
revoked; a read-only key sees no action button.

A screenshot of each page (login, sessions, timeline, permission ask, agents,
revoke confirm, audit) is written at 1280x900 to docs/console/ (or
$AIRLOCK_CONSOLE_SCREENSHOTS): the README shows them.

Needs scripts/setup.d/80-chromium.sh (AIRLOCK_CHROMIUM, AIRLOCK_CHROMEDRIVER,
SE_OFFLINE) and 30-images.sh (AIRLOCK_EXECUTOR_PATH, AIRLOCK_SANDBOX_IMAGE).
"""

import os
import pathlib
import time

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ROOT, bridged_deployment, user_message
from test_api_tls import pki  # noqa: F401  (fixture: a CA file the bridge can trust upstream)

WAIT = 120
#: The screenshots' window size (also what the README's images are).
WINDOW = (1280, 900)
SHOTS = pathlib.Path(os.environ.get("AIRLOCK_CONSOLE_SCREENSHOTS", ROOT / "docs" / "console"))
#: What the XSS session's tool echoes (its input and so its output).
XSS_IMG = "<img src=x onerror=window.__xss=1>"
XSS_SCRIPT = "</script><script>window.__xss=1</script>"


@pytest.fixture(scope="module")
def deployment(pki):  # noqa: F811
    # Checkpoints after every audit record, so the audit page has one at once.
    with bridged_deployment("fake-model-bash", str(pki / "ca.pem"), "console", WAIT,
                            agent_toml="[audit]\ncheckpoint_every_records = 1\ncheckpoint_interval_seconds = 1\n") as d:
        admin = d.cp.cli("api-keys", "create", "--name", "ops-admin", "--json")
        d.admin_key, d.admin_key_id = admin["key"], admin["id"]
        d.console = d.cp.base_url + "/console"
        yield d


@pytest.fixture(scope="module")
def browser():
    chromium = os.environ.get("AIRLOCK_CHROMIUM", "/usr/bin/chromium")
    driver_path = os.environ.get("AIRLOCK_CHROMEDRIVER", "/usr/bin/chromedriver")
    if not (os.path.exists(chromium) and os.path.exists(driver_path)):
        pytest.fail(f"{chromium} / {driver_path} missing: source scripts/setup.d/80-chromium.sh")
    # Selenium Manager must never try the network: the local driver is given.
    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# ---------------------------------------------------------------- helpers

def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.get_window_size() == {"width": WINDOW[0], "height": WINDOW[1]}
    assert driver.save_screenshot(str(SHOTS / f"{name}.png")), name


def until(driver, what, cond, timeout=30):
    """Waits for `cond(driver)` to be truthy (stale elements are retried)."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(cond)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what} on {driver.current_url}:\n"
                             f"{driver.page_source[-3000:]}") from None


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def click(driver, selector, what):
    """Clicks the first match, retried while it is missing or replaced."""
    def go(x):
        found = css(x, selector)
        if found:
            found[0].click()
        return bool(found)
    until(driver, what, go)


def sign_in(driver, d, key):
    driver.delete_all_cookies()
    driver.get(d.console + "/login")
    until(driver, "the login form", lambda b: css(b, "#login-form"))
    field = driver.find_element(By.ID, "api_key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "sign-in").click()
    until(driver, "the sessions page", lambda b: b.current_url.split("?")[0].endswith("/console/sessions"))


def as_admin(driver, d):
    """Signed in with the admin key (sign-ins are rate limited per address:
    sign in again only when another key is signed in)."""
    driver.get(d.console + "/sessions")
    who = css(driver, "#whoami")
    if not (who and "ops-admin" in who[0].text):
        sign_in(driver, d, d.admin_key)


def events_of(d, session_id):
    return list(d.client.beta.sessions.events.list(session_id))


def wait_idle(d, session_id, reason, count=1):
    """Waits (through the API) until the session has gone idle `count` times,
    the last with stop reason `reason`; returns its events."""
    deadline = time.monotonic() + WAIT
    while True:
        events = events_of(d, session_id)
        idles = [e for e in events if e.type == "session.status_idle"]
        if len(idles) >= count and idles[-1].stop_reason.type == reason:
            return events
        assert time.monotonic() < deadline, f"session {session_id} never went idle ({reason}): " \
                                            f"{[e.type for e in events]}"
        time.sleep(0.3)


def bash_agent(d, name, always_ask):
    configs = [{"name": "bash", "permission_policy": {"type": "always_ask"}}] if always_ask else []
    return d.client.beta.agents.create(
        name=name, model="claude-fake",
        tools=[{"type": "agent_toolset_20260401", "configs": configs}])


def pending_ask(d, title, command):
    """A session whose `always_ask` bash call waits for a confirmation."""
    agent = bash_agent(d, "asks-first", always_ask=True)
    s = d.client.beta.sessions.create(agent=agent.id, environment_id=d.environment.id, title=title)
    d.client.beta.sessions.events.send(s.id, events=[user_message(f"$ {command}")])
    events = wait_idle(d, s.id, "requires_action")
    use = next(e for e in events if e.type == "agent.tool_use")
    assert use.evaluated_permission == "ask"
    return s, use


def connected_agents(d):
    """Agent ids in `control-plane agents list --json` (the connected ones)."""
    out = d.cp.cli("agents", "list", "--json")
    return {a["agent_id"] for a in (out["agents"] if isinstance(out, dict) else out)}


def assert_inert(driver, where):
    """No payload ran and none became an element."""
    assert driver.execute_script("return typeof window.__xss") == "undefined", f"script ran ({where})"
    assert not css(driver, 'img[src="x"]'), f"an <img> was injected ({where})"
    scripts = driver.execute_script(
        "return Array.from(document.scripts).map(s => [s.getAttribute('src'), s.text])")
    for src, text in scripts:
        assert src and "/console/static/" in src and not text.strip(), f"script {src!r} {text!r} ({where})"


# ---------------------------------------------------------------- tests

def test_sign_in(deployment, browser):
    d, b = deployment, browser
    b.delete_all_cookies()
    b.get(d.console + "/")
    until(b, "the redirect to the login page", lambda x: x.current_url.endswith("/console/login"))
    label = css(b, 'label[for="api_key"]')
    assert label and label[0].text.strip(), "the key field has a label"
    assert b.find_element(By.ID, "api_key").get_attribute("type") == "password"
    shot(b, "login")
    b.find_element(By.ID, "api_key").send_keys("sk-airlock-not-a-key")
    b.find_element(By.ID, "sign-in").click()
    err = until(b, "the error", lambda x: css(x, "#error"))[0]
    assert "invalid API key" in err.text
    assert not b.get_cookie("airlock_console"), "no session for a bad key"
    sign_in(b, d, d.admin_key)
    cookie = b.get_cookie("airlock_console")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console", cookie
    assert d.admin_key not in cookie["value"]
    who = b.find_element(By.ID, "whoami")
    assert who.get_attribute("data-role") == "admin" and "ops-admin" in who.text
    for nav in ("#nav-sessions", "#nav-agents", "#nav-audit"):
        assert css(b, nav), nav


def test_approve_an_always_ask_call_and_watch_the_run_finish_live(deployment, browser):
    d, b = deployment, browser
    # The call sleeps, so the result cannot be in the page the approval's redirect renders.
    s, use = pending_ask(d, "deploy the docs site", "sleep 6; echo approved-in-the-browser")
    as_admin(b, d)
    b.get(d.console + "/sessions")
    row = f'tr.session[data-session-id="{s.id}"]'
    until(b, "the SDK's session in the list, idle", lambda x: css(x, f'{row} td.status[data-status="idle"]'))
    shot(b, "sessions")
    # (the script refreshes the rows every 3 s: find the link when clicking it)
    click(b, f"{row} a.session-link", "the session link")
    until(b, "the timeline", lambda x: x.current_url.split("?")[0].endswith(f"/console/sessions/{s.id}"))
    kinds = [e.get_attribute("data-event-type") for e in css(b, "ol#timeline li.event")]
    assert "user.message" in kinds and "agent.tool_use" in kinds, kinds
    call = b.find_element(By.CSS_SELECTOR, f'li.event.tool-call[data-tool-use-id="{use.id}"]')
    assert "bash" in call.text and "approved-in-the-browser" in call.text, call.text
    form = b.find_element(By.CSS_SELECTOR, f'form.confirm[data-tool-use-id="{use.id}"]')
    assert css(b, "#session-stop-reason") and "requires_action" in b.find_element(By.ID, "session-stop-reason").text
    shot(b, "permission-ask")
    form.find_element(By.CSS_SELECTOR, "button.approve").click()

    # The redirect back to the timeline: the ask is answered, the call still runs.
    until(b, "the ask answered", lambda x: x.current_url.split("?")[0].endswith(f"/console/sessions/{s.id}")
          and not css(x, f'form.confirm[data-tool-use-id="{use.id}"]'))
    until(b, "the live stream", lambda x: css(x, '#live-indicator[data-state="live"]'))
    b.execute_script("""
        window.__same_page = true;
        window.__statuses = [];
        const seen = () => { const s = document.getElementById('session-status');
                             if (s) window.__statuses.push(s.getAttribute('data-status')); };
        seen();
        new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true});
    """)
    assert "done: approved-in-the-browser" not in b.find_element(By.ID, "timeline").text, \
        "the result was already there when the page loaded: nothing was shown live"
    until(b, "the result and the idle status without a reload", lambda x:
          "done: approved-in-the-browser" in x.find_element(By.ID, "timeline").text
          and x.find_element(By.ID, "session-status").get_attribute("data-status") == "idle", timeout=WAIT)
    assert b.execute_script("return window.__same_page") is True, "the page was reloaded"
    statuses = b.execute_script("return window.__statuses")
    assert "running" in statuses and statuses[-1] == "idle", statuses
    call = b.find_element(By.CSS_SELECTOR, f'li.event.tool-call[data-tool-use-id="{use.id}"]')
    assert "approved-in-the-browser\n" in call.text or call.text.count("approved-in-the-browser") >= 2, call.text
    ran_on = call.find_element(By.CSS_SELECTOR, ".ran-on").text
    assert d.agent_id in ran_on, ran_on
    assert "end_turn" in b.find_element(By.ID, "session-stop-reason").text
    shot(b, "timeline")

    # The approval is the same event the API's confirmation appends.
    events = events_of(d, s.id)
    confirmations = [e for e in events if e.type == "user.tool_confirmation"]
    assert [(c.tool_use_id, c.result) for c in confirmations] == [(use.id, "allow")]
    result = next(e for e in events if e.type == "agent.tool_result" and e.tool_use_id == use.id)
    assert not result.is_error


def test_xss_payloads_in_tool_input_and_output_stay_text(deployment, browser):
    d, b = deployment, browser
    agent = d.client.beta.agents.create(name=XSS_IMG, model="claude-fake",
                                        tools=[{"type": "agent_toolset_20260401"}])
    s = d.client.beta.sessions.create(agent=agent.id, environment_id=d.environment.id, title=XSS_SCRIPT)
    as_admin(b, d)
    b.get(f"{d.console}/sessions/{s.id}")
    until(b, "the live stream", lambda x: css(x, '#live-indicator[data-state="live"]'))
    # Appended live: each SSE fragment goes into the page as it arrives.
    d.client.beta.sessions.events.send(s.id, events=[user_message(f"$ echo '{XSS_IMG}' '{XSS_SCRIPT}'")])
    until(b, "the tool result, live", lambda x: "done: " in x.find_element(By.ID, "timeline").text
          and x.find_element(By.ID, "session-status").get_attribute("data-status") == "idle", timeout=WAIT)
    events = wait_idle(d, s.id, "end_turn")
    result = next(e for e in events if e.type == "agent.tool_result")
    assert XSS_IMG in result.content[0].text and XSS_SCRIPT in result.content[0].text, result
    assert_inert(b, "timeline, appended live")
    # As served, and in the list (title) and on the agents' names.
    for url in (f"{d.console}/sessions/{s.id}", f"{d.console}/sessions/{s.id}?after_seq=0", f"{d.console}/sessions"):
        b.get(url)
        until(b, f"{url} loaded", lambda x: css(x, "nav"))
        assert_inert(b, url)
        if "/sessions/" in url:
            call = b.find_element(By.CSS_SELECTOR, "li.event.tool-call")
            # the input and the output show the payloads as text
            assert call.text.count(XSS_IMG) >= 2 and call.text.count(XSS_SCRIPT) >= 2, call.text
        else:
            assert XSS_SCRIPT in b.find_element(By.CSS_SELECTOR, f'tr.session[data-session-id="{s.id}"]').text


def test_audit_page_shows_the_checkpoint_and_the_approval(deployment, browser):
    d, b = deployment, browser
    as_admin(b, d)
    deadline = time.monotonic() + 60
    while True:
        b.get(d.console + "/audit")
        rows = [r for r in css(b, "table#checkpoints tr") if d.agent_id in r.text]
        if rows and rows[0].find_elements(By.CSS_SELECTOR, 'td.verification[data-state="verified"]'):
            break
        assert time.monotonic() < deadline, f"no verified checkpoint of {d.agent_id}:\n{b.page_source[-3000:]}"
        time.sleep(1)
    # The console's approval, recorded with the key that made it.
    audit = requests.get(d.cp.base_url + "/v1/airlock/audit/events", params={"api_key_id": d.admin_key_id},
                         headers={"x-api-key": d.cp.key}, timeout=30)
    assert audit.status_code == 200, audit.text
    approvals = [e for e in audit.json()["data"] if "confirm" in e["action"]]
    assert approvals, "the console's approval is in the control plane's audit"
    table = b.find_element(By.CSS_SELECTOR, "table#audit-events").text
    assert approvals[0]["action"] in table and d.admin_key_id in table, table
    shot(b, "audit")


def test_agents_page_and_revoke_through_the_confirmation(deployment, browser):
    d, b = deployment, browser
    as_admin(b, d)
    b.get(d.console + "/agents")
    row = until(b, "the agent's row", lambda x: css(x, f'tr.agent[data-agent-id="{d.agent_id}"]'))[0]
    assert row.find_element(By.CSS_SELECTOR, "td.agent-state").get_attribute("data-state") == "connected"
    shot(b, "agents")
    b.get(f"{d.console}/agents/{d.agent_id}")
    until(b, "the revoke link", lambda x: css(x, "a#revoke")).pop().click()
    until(b, "the confirmation page", lambda x: css(x, "form#revoke-confirm"))
    assert b.current_url.endswith(f"/console/agents/{d.agent_id}/revoke")
    # Nothing happened yet: the confirmation is its own step.
    assert d.agent_id in connected_agents(d)
    shot(b, "revoke-confirm")
    b.find_element(By.ID, "revoke-confirm-button").click()
    # The POST's answer (a redirect to the agent's page) must land before the
    # next navigation, or it replaces the list loaded below.
    until(b, "the revoke answered", lambda x: x.current_url.split("?")[0].endswith(f"/console/agents/{d.agent_id}")
          and css(x, "#agent-state"))
    deadline = time.monotonic() + 30
    while True:
        b.get(d.console + "/agents")
        row = until(b, "the agent's row", lambda x: css(x, f'tr.agent[data-agent-id="{d.agent_id}"]'))[0]
        if row.find_element(By.CSS_SELECTOR, "td.agent-state").get_attribute("data-state") == "revoked":
            break
        assert time.monotonic() < deadline, row.get_attribute("outerHTML")
        time.sleep(0.5)


def test_read_only_key_sees_no_action_button(deployment, browser):
    d, b = deployment, browser
    s, use = pending_ask(d, "waiting for an operator", "echo never-approved")
    viewer = d.cp.cli("api-keys", "create", "--name", "auditor", "--role", "read-only", "--json")
    sign_in(b, d, viewer["key"])
    who = b.find_element(By.ID, "whoami")
    assert who.get_attribute("data-role") == "read_only" and "auditor" in who.text
    for path in (f"/sessions/{s.id}", "/sessions", "/agents", f"/agents/{d.agent_id}", "/audit"):
        b.get(d.console + path)
        until(b, f"{path} loaded", lambda x: css(x, "nav"))
        if path == f"/sessions/{s.id}":
            # the ask is shown, but nothing to answer it with
            assert css(b, f'li.event.tool-call[data-tool-use-id="{use.id}"]')
        for sel in ("form.confirm", "button.approve", "button.deny", "form#interrupt", "form#archive", "a#revoke",
                    "form#revoke-confirm"):
            assert not css(b, sel), f"{sel} on {path} for a read-only key"
        actions = [f.get_attribute("action") for f in css(b, "form")
                   if (f.get_attribute("method") or "get").lower() == "post"]
        assert all(a.endswith("/console/logout") for a in actions), (path, actions)
    # The same page has the buttons for an admin (so the absence above means something).
    sign_in(b, d, d.admin_key)
    b.get(f"{d.console}/sessions/{s.id}")
    until(b, "the admin's confirm form", lambda x: css(x, f'form.confirm[data-tool-use-id="{use.id}"] button.approve'))
    assert css(b, "form#interrupt") and css(b, "form#archive")
