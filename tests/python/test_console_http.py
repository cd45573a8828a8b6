"""The web console (issue 12, docs/console.md) at the HTTP level, through the
real listener of a real `control-plane serve` (conftest's `ControlPlane`, its
model the scripted `fake-model-sdk`), with `requests`:

- no console page without a valid session cookie, on every route (a missing,
  made-up or logged-out cookie is sent to the login page and sees nothing);
- the cookie's flags (`HttpOnly`, `SameSite=Strict`, `Path=/console`; `Secure`
  when the API has `[api.tls]`), and the page headers (CSP, nosniff);
- every console POST needs the session's CSRF token (missing or wrong: 403,
  nothing changed), and the same POST with the token works;
- a read-only key is refused every console POST and every state-changing
  route of the public API (403 `permission_error`), and nothing changes;
- revoking the API key ends its console sessions.

The router-level checks are console/tests (the server's own); the browser's
are test_console_browser.py. No Docker needed: the pending permission ask
needs no sandbox, and the agent is enrolled but never run.
"""

import html.parser
import pathlib
import re
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import ControlPlane, binary, free_port, user_message
from test_api_tls import pki  # noqa: F401  (fixture: a CA and a certificate for localhost)

CSRF_ERROR = "CSRF token missing or invalid"


class Page(html.parser.HTMLParser):
    """The start tags of an HTML page, with their attributes."""

    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag=None, **attrs):
        """Tags named `tag` (None: any) with these attributes (`class_` is
        one of the classes, `for_` is `for`, `data_role` is `data-role`)."""
        def has(a, k, v):
            if k == "class_":
                return v in (a.get("class") or "").split()
            return a.get(k.rstrip("_").replace("_", "-")) == v
        return [a for t, a in self.tags if tag in (None, t) and all(has(a, k, v) for k, v in attrs.items())]

    def csrf(self):
        tokens = {a.get("value") for a in self.find("input", name="csrf")}
        assert len(tokens) == 1 and None not in tokens, f"one CSRF token per page: {tokens}"
        return tokens.pop()

    def post_actions(self):
        return [a.get("action") for a in self.find("form") if (a.get("method") or "get").lower() == "post"]


@pytest.fixture(scope="module")
def deployment(fake_model):
    tunnel, enroll = free_port(), free_port()
    while enroll == tunnel:
        enroll = free_port()
    cp = ControlPlane(fake_model.base_url, tunnel_port=tunnel, enroll_port=enroll)
    agent_dir = tempfile.TemporaryDirectory(prefix="airlock-py-console-agent-")
    try:
        d = type("Deployment", (), {})()
        d.cp, d.console = cp, cp.base_url + "/console"
        admin = cp.cli("api-keys", "create", "--name", "console-admin", "--json")
        d.admin_key, d.admin_key_id = admin["key"], admin["id"]
        viewer = cp.cli("api-keys", "create", "--name", "console-viewer", "--role", "read-only", "--json")
        d.viewer_key = viewer["key"]
        assert viewer.get("role") in ("read_only", "read-only"), viewer
        d.client = cp.client(timeout=60)
        env = d.client.beta.environments.create(name=f"console-http-{time.monotonic_ns()}",
                                                config={"type": "self_hosted"})
        # An enrolled agent (never run: revocation needs none connected).
        join = cp.cli("tokens", "create", "--environment", env.id, "--json")["join_string"]
        config = pathlib.Path(agent_dir.name) / "agent.toml"
        config.write_text(f'data_dir = "{pathlib.Path(agent_dir.name) / "data"}"\n')
        out = subprocess.run([binary("sandbox-agent"), "--config", str(config), "enroll", "--join", join],
                             check=True, capture_output=True, timeout=60).stdout.decode()
        d.agent_id = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("agent_id="))
        # A session waiting for a confirmation of its `always_ask` bash call.
        agent = d.client.beta.agents.create(
            name="asks", model="claude-fake",
            tools=[{"type": "agent_toolset_20260401",
                    "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}]}])
        d.session = d.client.beta.sessions.create(agent=agent.id, environment_id=env.id, title="http checks")
        d.client.beta.sessions.events.send(d.session.id, events=[user_message("run bash please")])
        d.tool_use_id = wait_for_ask(d)
        # Sign-ins are rate limited per address (10 at once): one admin session for the module.
        d.admin = signed_in(d, d.admin_key)
        d.routes = post_routes(d)
        yield d
    finally:
        code = cp.stop()
        log = cp.log_path.read_text()
        cp.dir.cleanup()
        agent_dir.cleanup()
    assert code == 0, f"control-plane did not shut down gracefully (exit {code}):\n{log[-4000:]}"


def wait_idle(d, reason):
    """Waits until the session's last idle has stop reason `reason`; its events."""
    deadline = time.monotonic() + 60
    while True:
        events = list(d.client.beta.sessions.events.list(d.session.id))
        idle = [e for e in events if e.type == "session.status_idle"]
        if idle and idle[-1].stop_reason.type == reason:
            return events
        assert time.monotonic() < deadline, [e.type for e in events]
        time.sleep(0.2)


def wait_for_ask(d):
    events = wait_idle(d, "requires_action")
    return next(e.id for e in events if e.type == "agent.tool_use")


def state(d):
    """Everything a console POST could change: the session's log and record,
    the enrolled agents (revocation), the API keys."""
    return (
        [(e.id, e.type) for e in d.client.beta.sessions.events.list(d.session.id)],
        # (status and archival: the record's other fields, e.g. its stats, move with time)
        (lambda r: (r.status, getattr(r, "archived_at", None)))(d.client.beta.sessions.retrieve(d.session.id)),
        d.cp.cli("agents", "list", "--enrolled", "--json"),
        d.cp.cli("api-keys", "list", "--json"),
    )


def signed_in(d, key):
    s = requests.Session()
    r = s.post(d.console + "/login", data={"api_key": key}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"].endswith("/console/sessions"), (r.status_code, r.text[:500])
    assert s.cookies.get("airlock_console"), r.headers
    return s


def get_routes(d):
    sid, aid = d.session.id, d.agent_id
    return ["/", "/sessions", "/sessions?status=idle", f"/sessions/{sid}", f"/sessions/{sid}?after_seq=0",
            f"/sessions/{sid}?before_seq=5", f"/sessions/{sid}/live?after_seq=0", "/agents", f"/agents/{aid}",
            f"/agents/{aid}/revoke", "/audit"]


def post_routes(d):
    """Every state-changing console route with the form it takes (the
    interrupt and archive actions as the admin's timeline page names them)."""
    page = Page(d.admin.get(f"{d.console}/sessions/{d.session.id}", timeout=30).text)
    actions = {f["id"]: f["action"] for f in page.find("form") if f.get("id") in ("interrupt", "archive")}
    assert set(actions) == {"interrupt", "archive"}, page.find("form")
    confirm = page.find("form", class_="confirm")
    assert confirm and confirm[0]["action"] == f"/console/sessions/{d.session.id}/confirm", confirm
    return [
        (f"/console/sessions/{d.session.id}/confirm", {"tool_use_id": d.tool_use_id, "result": "deny"}),
        (actions["interrupt"], {}),
        (actions["archive"], {}),
        (f"/console/agents/{d.agent_id}/revoke", {}),
    ]


def origin(d):
    return d.cp.base_url


def test_login_cookie_flags_and_headers(deployment):
    d = deployment
    r = requests.get(d.console + "/login", timeout=30)
    assert r.status_code == 200
    page = Page(r.text)
    assert page.find("form", id="login-form") and page.find("input", id="api_key", type="password")
    assert page.find("label", for_="api_key")
    bad = requests.post(d.console + "/login", data={"api_key": "sk-airlock-wrong"}, allow_redirects=False, timeout=30)
    assert bad.status_code == 401 and "invalid API key" in bad.text and "set-cookie" not in bad.headers
    empty = requests.post(d.console + "/login", data={}, allow_redirects=False, timeout=30)
    assert empty.status_code in (400, 401) and "set-cookie" not in empty.headers
    ok = requests.post(d.console + "/login", data={"api_key": d.admin_key}, allow_redirects=False, timeout=30)
    assert ok.status_code == 303 and ok.headers["location"].endswith("/console/sessions")
    cookie = ok.headers["set-cookie"]
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert attrs[0].startswith("airlock_console=") and "httponly" in attrs and "samesite=strict" in attrs, cookie
    assert "path=/console" in attrs and "secure" not in attrs, cookie  # plain HTTP on loopback
    assert d.admin_key not in cookie
    s = requests.Session()
    s.cookies.set("airlock_console", ok.cookies["airlock_console"])
    page = s.get(d.console + "/sessions", allow_redirects=False, timeout=30)
    assert page.status_code == 200 and d.session.id in page.text
    csp = page.headers.get("content-security-policy", "")
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp, csp
    assert page.headers.get("x-content-type-options") == "nosniff"
    assert "<script>" not in page.text, "no inline script"


@pytest.mark.parametrize("cookie", [None, "not-a-session", "0" * 64])
def test_no_page_without_a_session_cookie(deployment, cookie):
    d = deployment
    s = requests.Session()
    if cookie:
        s.cookies.set("airlock_console", cookie)
    before = state(d)
    for path in get_routes(d):
        r = s.get(d.console + path, allow_redirects=False, timeout=30, stream=True)
        body = r.raw.read(65536).decode(errors="replace")
        r.close()
        assert r.status_code == 303 and r.headers["location"].endswith("/console/login"), (path, r.status_code)
        for secret in (d.session.id, d.agent_id, "http checks"):
            assert secret not in body, (path, body[:300])
    for path, form in [(f"/console/sessions/{d.session.id}/confirm", {"tool_use_id": d.tool_use_id, "result": "allow"}),
                       (f"/console/sessions/{d.session.id}/interrupt", {}),
                       (f"/console/sessions/{d.session.id}/archive", {}),
                       (f"/console/agents/{d.agent_id}/revoke", {}),
                       ("/console/logout", {})]:
        r = s.post(origin(d) + path, data={**form, "csrf": "x"}, allow_redirects=False, timeout=30)
        assert r.status_code in (303, 401, 403), (path, r.status_code)
        if r.status_code == 303:
            assert r.headers["location"].endswith("/console/login"), path
    assert state(d) == before, "a POST without a session changed something"


def test_csrf_token_required_on_every_post(deployment):
    d = deployment
    routes, s = d.routes, d.admin
    token = Page(s.get(f"{d.console}/sessions/{d.session.id}", timeout=30).text).csrf()
    before = state(d)
    for path, form in routes + [("/console/logout", {})]:
        for bad in ({}, {"csrf": ""}, {"csrf": "0" * len(token)}, {"csrf": token[:-1]}):
            r = s.post(origin(d) + path, data={**form, **bad}, allow_redirects=False, timeout=30)
            assert r.status_code == 403 and CSRF_ERROR in r.text, (path, bad, r.status_code, r.text[:300])
    # another console session's token is not this one's
    other = signed_in(d, d.admin_key)
    other_token = Page(other.get(d.console + "/agents", timeout=30).text).csrf()
    assert other_token != token
    r = s.post(origin(d) + routes[0][0], data={**routes[0][1], "csrf": other_token}, allow_redirects=False, timeout=30)
    assert r.status_code == 403 and CSRF_ERROR in r.text
    assert state(d) == before, "a POST without the CSRF token changed something"
    assert s.get(d.console + "/sessions", allow_redirects=False, timeout=30).status_code == 200, "still signed in"

    # With the token the same form works: the denial is the API's confirmation event.
    path, form = routes[0]
    r = s.post(origin(d) + path, data={**form, "csrf": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303, (r.status_code, r.text[:300])
    events = list(d.client.beta.sessions.events.list(d.session.id))
    confirmations = [(e.tool_use_id, e.result) for e in events if e.type == "user.tool_confirmation"]
    assert confirmations == [(d.tool_use_id, "deny")], confirmations
    audit = requests.get(d.cp.base_url + "/v1/airlock/audit/events", params={"resource_id": d.session.id},
                         headers={"x-api-key": d.cp.key}, timeout=30).json()["data"]
    assert any(e["actor"].get("api_key_id") == d.admin_key_id and "confirm" in e["action"] for e in audit), audit
    wait_idle(d, "end_turn")  # the denied call's run ends; the next test's snapshot must hold still


def test_read_only_key_is_refused_every_change(deployment):
    d = deployment
    routes = d.routes
    s = signed_in(d, d.viewer_key)
    page = s.get(f"{d.console}/sessions/{d.session.id}", timeout=30)
    assert page.status_code == 200 and d.session.id in page.text, "a read-only key reads"
    parsed = Page(page.text)
    assert parsed.find(id="whoami", data_role="read_only"), parsed.find(id="whoami")
    assert all(a.endswith("/console/logout") for a in parsed.post_actions()), parsed.post_actions()
    token = parsed.csrf()  # the logout form's
    before = state(d)
    for path, form in routes:
        r = s.post(origin(d) + path, data={**form, "csrf": token}, allow_redirects=False, timeout=30)
        assert r.status_code == 403, (path, r.status_code, r.text[:300])
    assert state(d) == before, "a read-only console POST changed something"

    # The public API: reads work, every state-changing route is refused naming the role.
    api = requests.Session()
    api.headers.update({"x-api-key": d.viewer_key, "anthropic-version": "2023-06-01",
                        "anthropic-beta": "managed-agents-2026-04-01"})
    assert api.get(d.cp.base_url + f"/v1/sessions/{d.session.id}", timeout=30).status_code == 200
    sid, aid = d.session.id, "agent_0"
    changes = [("POST", "/v1/agents"), ("POST", f"/v1/agents/{aid}"), ("POST", f"/v1/agents/{aid}/archive"),
               ("POST", "/v1/environments"), ("POST", "/v1/environments/env_0"),
               ("DELETE", "/v1/environments/env_0"), ("POST", "/v1/environments/env_0/archive"),
               ("POST", "/v1/vaults"), ("POST", "/v1/vaults/vlt_0"), ("DELETE", "/v1/vaults/vlt_0"),
               ("POST", "/v1/vaults/vlt_0/archive"), ("POST", "/v1/vaults/vlt_0/credentials"),
               ("POST", "/v1/vaults/vlt_0/credentials/cred_0"), ("DELETE", "/v1/vaults/vlt_0/credentials/cred_0"),
               ("POST", "/v1/vaults/vlt_0/credentials/cred_0/archive"),
               ("POST", "/v1/vaults/vlt_0/credentials/cred_0/mcp_oauth_validate"),
               ("POST", "/v1/sessions"), ("POST", f"/v1/sessions/{sid}"), ("DELETE", f"/v1/sessions/{sid}"),
               ("POST", f"/v1/sessions/{sid}/archive"), ("POST", f"/v1/sessions/{sid}/resources"),
               ("POST", f"/v1/sessions/{sid}/resources/res_0"), ("DELETE", f"/v1/sessions/{sid}/resources/res_0"),
               ("POST", f"/v1/sessions/{sid}/events"), ("PUT", "/v1/agents"), ("PATCH", f"/v1/sessions/{sid}")]
    body = {"events": [{"type": "user.tool_confirmation", "tool_use_id": d.tool_use_id, "result": "allow"}],
            "name": "x", "model": "claude-fake", "title": "changed"}
    for method, path in changes:
        r = api.request(method, d.cp.base_url + path, json=body, timeout=30)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["type"] == "permission_error" and re.search(r"read[_-]only", err["message"]), (path, err)
    assert state(d) == before, "a read-only API request changed something"


def test_logout_and_key_revocation_end_the_console_session(deployment):
    d = deployment
    s = signed_in(d, d.admin_key)
    cookie = s.cookies.get("airlock_console")
    token = Page(s.get(d.console + "/agents", timeout=30).text).csrf()
    r = s.post(d.console + "/logout", data={"csrf": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"].endswith("/console/login")
    assert "airlock_console=" in r.headers.get("set-cookie", "")
    replay = requests.get(d.console + "/sessions", cookies={"airlock_console": cookie}, allow_redirects=False,
                          timeout=30)
    assert replay.status_code == 303 and replay.headers["location"].endswith("/console/login"), \
        "the server forgot the session, not only the browser"

    doomed = d.cp.cli("api-keys", "create", "--name", "doomed", "--json")
    s = signed_in(d, doomed["key"])
    assert s.get(d.console + "/sessions", allow_redirects=False, timeout=30).status_code == 200
    subprocess.run([binary("control-plane"), "--config", str(d.cp.config), "api-keys", "revoke", doomed["id"]],
                   check=True, capture_output=True, timeout=60)
    r = s.get(d.console + "/sessions", allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"].endswith("/console/login")
    again = requests.post(d.console + "/login", data={"api_key": doomed["key"]}, allow_redirects=False, timeout=30)
    assert again.status_code == 401


@pytest.fixture(scope="module")
def tls_control_plane(fake_model, pki):  # noqa: F811
    cp = ControlPlane(fake_model.base_url,
                      extra_toml=f'[api.tls]\ncert_file = "{pki / "api.crt"}"\nkey_file = "{pki / "api.key"}"\n')
    yield cp
    code = cp.stop()
    cp.dir.cleanup()
    assert code == 0


def test_cookie_is_secure_with_tls(tls_control_plane, pki):  # noqa: F811
    cp = tls_control_plane
    base = cp.base_url.replace("http://127.0.0.1", "https://localhost") + "/console"
    ca = str(pki / "ca.pem")
    r = requests.post(base + "/login", data={"api_key": cp.key}, allow_redirects=False, timeout=30, verify=ca)
    assert r.status_code == 303, (r.status_code, r.text[:300])
    attrs = [a.strip().lower() for a in r.headers["set-cookie"].split(";")]
    assert {"secure", "httponly", "samesite=strict", "path=/console"} <= set(attrs), attrs
    s = requests.Session()
    s.cookies.update(r.cookies)
    assert s.get(base + "/sessions", allow_redirects=False, timeout=30, verify=ca).status_code == 200
