"""Issue 10, MCP through the official SDK: an agent with two real MCP servers
and the sandbox toolset, on a real deployment (control-plane serve, an
enrolled sandbox-agent with `[bridge]`, a real `vault-bridge serve` with the
file backend, a real Docker sandbox of the default image):

- `tickets` (`mcp-servers`: tests/mcp/servers.py, official `mcp` SDK,
  Streamable HTTP over HTTPS with a test CA the bridge trusts) wants a
  static bearer token: a `static_bearer` credential;
- `notes` (the same file's `oauth-notes` behind the SDK's OAuth 2.1
  authorization server, access tokens living 3 s) wants an OAuth token: an
  `mcp_oauth` credential with `refresh` (`client_secret_basic`), so the
  bridge refreshes it in the middle of the session.

The scripted model (`fake-model-mcp`) calls a tool of each server and bash in
ONE turn; `add_note` is `always_ask`, so the session goes idle with
`requires_action` until a `user.tool_confirmation` arrives through the SDK;
its second turn calls `notes` again (after the first access token expired).
Checked: the events parse strictly into the SDK's `agent.mcp_tool_use` /
`agent.mcp_tool_result` types and carry what the servers answered, each
server saw each call exactly once (their call logs), the OAuth server was
asked for a refresh, and no secret (static token, access token, refresh
token, client secret) is in any event, the control plane's log or data dir,
the agent's log, or the sandbox (environment and files, read from the host
with `docker exec`).

Needs Docker, AIRLOCK_SANDBOX_IMAGE, AIRLOCK_EXECUTOR_PATH and the `mcp`
Python SDK (scripts/setup.d/55-mcp.sh).
"""

import datetime
import json
import os
import queue
import subprocess
import threading
import time

import pytest
from anthropic.types.beta.sessions import (
    BetaManagedAgentsAgentMCPToolResultEvent,
    BetaManagedAgentsAgentMCPToolUseEvent,
)

from conftest import binary, bridged_deployment, files_bytes, user_message

WAIT = 60
PIN = "airlock.environment_id"


class McpServers:
    """The `mcp-servers` fixture binary: prints its facts (`key=value`) then
    `ready`, then answers `grant` / `calls` / `stats` commands on stdin with
    one `key=<JSON>` line each; stops when its stdin closes."""

    def __init__(self, timeout=120):
        self.proc = subprocess.Popen([binary("mcp-servers")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env={**os.environ, "MCP_ACCESS_TTL": "3"})
        self.facts, self.lines = {}, queue.Queue()

        def pump():
            for line in self.proc.stdout:
                self.lines.put(line.decode().strip())
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while "ready" not in self.facts:
            line = self._line(deadline)
            if line is None:
                self.stop()
                raise RuntimeError(f"mcp-servers did not start (facts so far: {sorted(self.facts)})")
            k, _, v = line.partition("=")
            self.facts[k] = v
        self.secrets = json.loads(self.facts["secrets"])

    def _line(self, deadline):
        try:
            return self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def ask(self, command):
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()
        line = self._line(time.monotonic() + 60)
        assert line is not None, f"mcp-servers did not answer {command!r}"
        key, _, value = line.partition("=")
        assert key == command, f"mcp-servers answered {command!r} with {line[:500]!r}"
        return json.loads(value)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mcp_deployment():
    upstream = McpServers()
    try:
        with bridged_deployment("fake-model-mcp", upstream.facts["ca_file"], "mcp", WAIT) as d:
            d.mcp = upstream
            yield d
    finally:
        upstream.stop()


SEARCH = {"query": "printer on fire", "limit": 2}
NOTE = {"text": "from the sdk session"}
BASH = "echo bash-ran-$((6*7)); env"


def logs(d):
    return (f"\ncontrol plane:\n{d.cp.log_path.read_text()[-3000:]}\nagent:\n{d.agent_log_path.read_text()[-3000:]}"
            f"\nbridge:\n{d.bridge.log_path.read_text()[-3000:]}")


def test_sdk_session_calls_two_mcp_servers_and_bash_in_one_turn_with_an_always_ask_confirmed(mcp_deployment):
    d = mcp_deployment
    c = d.client
    f = d.mcp.facts

    # A vault with both credentials, through the SDK.
    vault = c.beta.vaults.create(display_name="mcp", metadata={PIN: d.environment.id})
    c.beta.vaults.credentials.create(vault.id, display_name="tickets", auth={
        "type": "static_bearer", "mcp_server_url": f["tickets_url"], "token": f["tickets_token"]})
    grant = d.mcp.ask("grant")
    expires_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=grant["expires_in"])
    oauth_cred = c.beta.vaults.credentials.create(vault.id, display_name="notes", auth={
        "type": "mcp_oauth", "mcp_server_url": f["oauth_url"], "access_token": grant["access_token"],
        "expires_at": expires_at.isoformat(),
        "refresh": {"client_id": f["oauth_client_id"], "refresh_token": grant["refresh_token"],
                    "token_endpoint": f["oauth_token_endpoint"], "scope": grant["scope"],
                    "token_endpoint_auth": {"type": "client_secret_basic",
                                            "client_secret": f["oauth_client_secret"]}}})
    secrets = [*d.mcp.secrets, grant["access_token"], grant["refresh_token"]]
    assert f["tickets_token"] in secrets and f["oauth_client_secret"] in secrets
    for s in secrets:
        assert s not in oauth_cred.model_dump_json()

    agent = c.beta.agents.create(
        name="support", model="claude-sonnet-4-5",
        mcp_servers=[{"type": "url", "name": "tickets", "url": f["tickets_url"]},
                     {"type": "url", "name": "notes", "url": f["oauth_url"]}],
        tools=[{"type": "agent_toolset_20260401"},
               {"type": "mcp_toolset", "mcp_server_name": "tickets",
                "default_config": {"permission_policy": {"type": "always_allow"}}},
               {"type": "mcp_toolset", "mcp_server_name": "notes",
                "default_config": {"permission_policy": {"type": "always_allow"}},
                "configs": [{"name": "add_note", "permission_policy": {"type": "always_ask"}}]}])
    s = c.beta.sessions.create(agent=agent.id, environment_id=d.environment.id, vault_ids=[vault.id])
    turns = [
        [{"name": "mcp__tickets__search", "input": SEARCH},
         {"name": "mcp__notes__add_note", "input": NOTE},
         {"name": "bash", "input": {"command": BASH}}],
        [{"name": "mcp__notes__list_notes", "input": {}}],
    ]
    prompt = "File the printer ticket:\n" + "\n".join(f"> {json.dumps(t)}" for t in turns)

    # Turn 1: search and bash run; add_note waits for a confirmation.
    with c.beta.sessions.events.stream(s.id) as stream:
        c.beta.sessions.events.send(s.id, events=[user_message(prompt)])
        for ev in stream:
            if ev.type == "session.status_idle":
                break
    assert ev.stop_reason.type == "requires_action", f"{ev}{logs(d)}"
    events = list(c.beta.sessions.events.list(s.id))
    uses = [e for e in events if e.type == "agent.mcp_tool_use"]
    assert [(u.mcp_server_name, u.name) for u in uses] == [("tickets", "search"), ("notes", "add_note")], events
    ask = uses[1]
    assert ask.evaluated_permission == "ask" and uses[0].evaluated_permission == "allow"
    assert list(ev.stop_reason.event_ids) == [ask.id]
    assert d.mcp.ask("calls")["oauth"] == [], "nothing ran on notes before the confirmation"

    # Confirmed through the SDK: the session finishes.
    with c.beta.sessions.events.stream(s.id) as stream:
        c.beta.sessions.events.send(s.id, events=[
            {"type": "user.tool_confirmation", "tool_use_id": ask.id, "result": "allow"}])
        for ev in stream:
            if ev.type == "session.status_idle" and ev.stop_reason.type != "requires_action":
                break
    assert ev.stop_reason.type == "end_turn", f"{ev}{logs(d)}"

    events = list(c.beta.sessions.events.list(s.id))
    dump = json.dumps([e.model_dump(mode="json") for e in events])
    errors = [e for e in events if e.type == "session.error"]
    assert not errors, f"{errors}{logs(d)}"
    uses = [e for e in events if e.type == "agent.mcp_tool_use"]
    results = {e.mcp_tool_use_id: e for e in events if e.type == "agent.mcp_tool_result"}
    for e in uses:
        assert isinstance(e, BetaManagedAgentsAgentMCPToolUseEvent)
    for e in results.values():
        assert isinstance(e, BetaManagedAgentsAgentMCPToolResultEvent)
    assert [(u.mcp_server_name, u.name, u.input) for u in uses] == [
        ("tickets", "search", SEARCH), ("notes", "add_note", NOTE), ("notes", "list_notes", {})], dump[-4000:]
    assert set(results) == {u.id for u in uses}, dump[-4000:]

    def text(u):
        r = results[u.id]
        assert r.is_error is False, f"{r}{logs(d)}"
        return "".join(b.text for b in r.content if b.type == "text")

    found = json.loads(text(uses[0]))
    assert found["query"] == SEARCH["query"] and found["results"] == ["TICKET-1", "TICKET-2"], found
    assert text(uses[1]) == "note 1 added"
    assert json.loads(text(uses[2])) == [NOTE["text"]], "the note the confirmed call added"

    # bash ran in the same turn as the MCP calls, in the sandbox.
    bash_uses = [e for e in events if e.type == "agent.tool_use"]
    assert [b.name for b in bash_uses] == ["bash"]
    bash_result = next(e for e in events if e.type == "agent.tool_result" and e.tool_use_id == bash_uses[0].id)
    assert not bash_result.is_error and "bash-ran-42" in json.dumps(bash_result.model_dump(mode="json"))
    # One turn: the three calls come between the model's first and second message.
    model_msgs = [e for e in events if e.type == "agent.message"]
    assert len(model_msgs) == 3, dump[-4000:]
    at = {e.id: i for i, e in enumerate(events)}
    for u in (uses[0], uses[1], bash_uses[0]):
        assert at[model_msgs[0].id] < at[u.id] < at[model_msgs[1].id], dump[-4000:]
    assert at[model_msgs[1].id] < at[uses[2].id] < at[model_msgs[2].id]
    assert "from the sdk session" in json.dumps(model_msgs[-1].model_dump(mode="json")), "the model saw the notes"

    # Each server saw each call exactly once.
    calls = d.mcp.ask("calls")
    assert [(x["tool"], x["arguments"]) for x in calls["tickets"]] == [("search", SEARCH)], calls
    assert [(x["tool"], x["arguments"]) for x in calls["oauth"]] == [("add_note", NOTE), ("list_notes", {})], calls
    # The 3 s access token was refreshed by the bridge mid-session.
    stats = d.mcp.ask("stats")
    assert stats["refresh_succeeded"] >= 1 and stats["refresh_failed"] == 0, stats
    assert all(r["auth"] == "client_secret_basic" and r["client_id"] == f["oauth_client_id"]
               for r in stats["refreshes"]), stats
    first_result = results[uses[0].id].processed_at.timestamp()
    assert any(r["at"] > first_result for r in stats["refreshes"]), f"no refresh in the middle of the session: {stats}"

    # Canary: no secret in any event, the control plane's log or data dir,
    # the agent's log, or the sandbox.
    cp_files = files_bytes(d.cp.dir.name)
    agent_log = d.agent_log_path.read_bytes()
    for secret in secrets:
        assert secret not in dump, "secret in an event"
        assert secret.encode() not in cp_files, "secret in the control plane's data dir or log"
        assert secret.encode() not in agent_log, "secret in the agent's log"
        assert secret.encode() not in d.bridge.log_path.read_bytes(), "secret in the bridge's log"
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=airlock.agent_id={d.agent_id}"],
                         capture_output=True, check=True, timeout=60).stdout.decode().split()
    assert ids, "the session's sandbox runs"
    for cid in ids:
        for cmd in (["sh", "-c", "cat /proc/*/environ /proc/*/cmdline 2>/dev/null; true"],
                    ["tar", "-c", "--ignore-failed-read", "-f", "-", "/workspace", "/home", "/tmp", "/etc", "/run"]):
            seen = subprocess.run(["docker", "exec", cid, *cmd], capture_output=True, timeout=120).stdout
            assert seen, cmd
            for secret in secrets:
                assert secret.encode() not in seen, f"a secret found in the sandbox by {cmd}"
