"""MCP servers in agent definitions through the official anthropic SDK (2.12.0,
strict response validation) against a real `control-plane serve`: agents with
`mcp_servers` and `mcp_toolset` tools (created, retrieved, versioned),
sessions with `agent_with_overrides` and agent updates that replace the tools
and servers whole, the 400s that name the field at fault, and
`mcp_oauth_validate` with no vault-bridge connected (the typed 503).

The MCP calls themselves (harness → tunnel → agent → bridge → server) are
tested with real MCP servers elsewhere; this file is the API surface, plus
`mcp_oauth_validate` through the real path (control plane → tunnel →
sandbox-agent → vault-bridge → the `tickets` MCP server of tests/mcp/servers.py).
Needs AIRLOCK_EXECUTOR_PATH and AIRLOCK_SANDBOX_IMAGE for the sandbox-agent.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import anthropic
import pytest
from anthropic.types.beta import (
    BetaManagedAgentsAgentToolset20260401,
    BetaManagedAgentsMCPServerURLDefinition,
    BetaManagedAgentsMCPToolset,
)

from conftest import ROOT, ControlPlane, VaultBridge, binary

PIN = "airlock.environment_id"
KV_PATH = "airlock.kv_path"
TICKETS = {"type": "url", "name": "tickets", "url": "https://tickets.internal.example/mcp"}
WIKI = {"type": "url", "name": "wiki", "url": "http://10.20.30.40:8080/mcp"}


def mcp_tools():
    return [
        {"type": "agent_toolset_20260401"},
        {"type": "mcp_toolset", "mcp_server_name": "tickets",
         "default_config": {"permission_policy": {"type": "always_allow"}},
         "configs": [{"name": "close_ticket", "permission_policy": {"type": "always_ask"}},
                     {"name": "delete_ticket", "enabled": False}]},
        {"type": "mcp_toolset", "mcp_server_name": "wiki"},
    ]


@pytest.fixture
def mcp_agent(client):
    return client.beta.agents.create(name="support", model="claude-sonnet-4-5",
                                     mcp_servers=[TICKETS, WIKI], tools=mcp_tools())


def toolset_of(agent_or_snapshot, server):
    return next(t for t in agent_or_snapshot.tools if t.type == "mcp_toolset" and t.mcp_server_name == server)


def test_an_agent_with_two_mcp_servers_round_trips_and_versions(client, mcp_agent):
    a = mcp_agent
    assert a.version == 1
    assert all(isinstance(s, BetaManagedAgentsMCPServerURLDefinition) for s in a.mcp_servers)
    assert [(s.type, s.name, s.url) for s in a.mcp_servers] == [
        ("url", "tickets", TICKETS["url"]), ("url", "wiki", WIKI["url"])]
    assert isinstance(a.tools[0], BetaManagedAgentsAgentToolset20260401)
    tickets, wiki = toolset_of(a, "tickets"), toolset_of(a, "wiki")
    assert isinstance(tickets, BetaManagedAgentsMCPToolset) and isinstance(wiki, BetaManagedAgentsMCPToolset)
    # resolved: default_config and configs always present, defaults filled in
    assert tickets.default_config.enabled is True
    assert tickets.default_config.permission_policy.type == "always_allow"
    assert [(c.name, c.enabled, c.permission_policy.type) for c in tickets.configs] == [
        ("close_ticket", True, "always_ask"), ("delete_ticket", False, "always_allow")]
    assert wiki.default_config.enabled is True
    assert wiki.default_config.permission_policy.type == "always_ask", "MCP toolsets default to always_ask"
    assert wiki.configs == []
    assert client.beta.agents.retrieve(a.id) == a

    # an update replaces the servers and the tools whole: a new version
    v2 = client.beta.agents.update(
        a.id, version=1, mcp_servers=[{**WIKI, "url": "https://wiki.internal.example/mcp"}],
        tools=[{"type": "mcp_toolset", "mcp_server_name": "wiki",
                "default_config": {"enabled": False},
                "configs": [{"name": "search", "enabled": True, "permission_policy": {"type": "auto"}}]}])
    assert v2.version == 2
    assert [(s.name, s.url) for s in v2.mcp_servers] == [("wiki", "https://wiki.internal.example/mcp")]
    (only,) = v2.tools
    assert only.type == "mcp_toolset" and only.mcp_server_name == "wiki"
    assert only.default_config.enabled is False and only.default_config.permission_policy.type == "always_ask"
    assert [(c.name, c.enabled, c.permission_policy.type) for c in only.configs] == [("search", True, "auto")]
    # the first version is kept as it was
    v1 = client.beta.agents.retrieve(a.id, version=1)
    assert v1.mcp_servers == a.mcp_servers and v1.tools == a.tools
    # another field's update keeps them
    v3 = client.beta.agents.update(a.id, version=2, system="Be careful with tickets.")
    assert v3.version == 3 and v3.mcp_servers == v2.mcp_servers and v3.tools == v2.tools
    assert [v.version for v in client.beta.agents.versions.list(a.id)] == [3, 2, 1]

    # clearing the servers alone would leave the toolset without its server
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.agents.update(a.id, mcp_servers=[])
    assert e.value.body["error"]["message"].startswith(
        'tools.0.mcp_server_name: no MCP server named "wiki" (mcp_servers is empty)')
    v4 = client.beta.agents.update(a.id, mcp_servers=[], tools=[])
    assert v4.version == 4 and v4.mcp_servers == [] and v4.tools == []


@pytest.mark.parametrize("fields,message", [
    ({"mcp_servers": [TICKETS, WIKI], "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets"}]},
     'mcp_servers.1.name: MCP server "wiki" is not referenced by any mcp_toolset in tools'),
    ({"mcp_servers": [TICKETS], "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets"},
                                          {"type": "mcp_toolset", "mcp_server_name": "wiki"}]},
     'tools.1.mcp_server_name: no MCP server named "wiki" (mcp_servers defines tickets)'),
    ({"mcp_servers": [TICKETS], "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets"},
                                          {"type": "mcp_toolset", "mcp_server_name": "tickets"}]},
     'tools.1.mcp_server_name: MCP server "tickets" is already configured by tools.0'),
    ({"mcp_servers": [TICKETS, {**WIKI, "name": "tickets"}],
      "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets"}]},
     'mcp_servers.1.name: MCP server name "tickets" is already used by mcp_servers.0'),
    ({"mcp_servers": [{**TICKETS, "url": "tickets.internal/mcp"}],
      "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets"}]},
     "mcp_servers.0.url: expected an http or https URL"),
    ({"mcp_servers": [{**TICKETS, "name": "x" * 256}],
      "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets"}]},
     "mcp_servers.0.name: must be at most 255 characters"),
    ({"mcp_servers": [{"type": "url", "name": f"s{i}", "url": "https://a.example/"} for i in range(21)],
      "tools": []},
     "mcp_servers: at most 20 MCP servers are allowed, got 21"),
    ({"mcp_servers": [TICKETS], "tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets",
                                           "configs": [{"name": "t", "permission_policy": {"type": "never"}}]}]},
     'tools.0.configs.0.permission_policy.type: unknown permission policy "never"'),
])
def test_bad_mcp_definitions_are_400s_naming_the_field(client, fields, message):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.agents.create(name="bad", model="m", **fields)
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["message"].startswith(message), e.value.body["error"]["message"]


def test_sessions_override_and_update_servers_and_tools_whole(client, mcp_agent, environment):
    a = mcp_agent
    plain = client.beta.sessions.create(agent=a.id, environment_id=environment.id)
    assert plain.agent.mcp_servers == a.mcp_servers and plain.agent.tools == a.tools

    db = {"type": "url", "name": "db", "url": "http://127.0.0.1:7000/mcp"}
    over = client.beta.sessions.create(
        environment_id=environment.id,
        agent={"type": "agent_with_overrides", "id": a.id, "version": 1, "system": "Only read.",
               "mcp_servers": [db],
               "tools": [{"type": "mcp_toolset", "mcp_server_name": "db",
                          "configs": [{"name": "query", "permission_policy": {"type": "always_allow"}}]}]})
    assert over.agent.id == a.id and over.agent.version == 1 and over.agent.system == "Only read."
    assert [(s.name, s.url) for s in over.agent.mcp_servers] == [("db", db["url"])]
    (ts,) = over.agent.tools
    assert ts.mcp_server_name == "db" and ts.default_config.permission_policy.type == "always_ask"
    assert [(c.name, c.permission_policy.type) for c in ts.configs] == [("query", "always_allow")]
    assert client.beta.agents.retrieve(a.id) == a, "overrides do not change the agent"
    assert client.beta.sessions.retrieve(over.id).agent == over.agent

    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.sessions.create(environment_id=environment.id,
                                    agent={"type": "agent_with_overrides", "id": a.id, "mcp_servers": []})
    assert e.value.body["error"]["message"].startswith(
        'agent.tools.1.mcp_server_name: no MCP server named "tickets" (agent.mcp_servers is empty)')

    # update while idle: agent.mcp_servers and agent.tools replaced whole
    u = client.beta.sessions.update(
        plain.id, agent={"mcp_servers": [WIKI], "tools": [{"type": "mcp_toolset", "mcp_server_name": "wiki"}]})
    assert [s.name for s in u.agent.mcp_servers] == ["wiki"]
    assert [t.mcp_server_name for t in u.agent.tools] == ["wiki"]
    assert client.beta.sessions.retrieve(plain.id).agent == u.agent
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.sessions.update(plain.id, agent={"mcp_servers": [WIKI, TICKETS]})
    assert e.value.body["error"]["message"].startswith(
        'agent.mcp_servers.1.name: MCP server "tickets" is not referenced by any mcp_toolset in agent.tools')
    assert client.beta.sessions.retrieve(plain.id).agent == u.agent, "a refused update changes nothing"
    cleared = client.beta.sessions.update(plain.id, agent={"mcp_servers": [], "tools": []})
    assert cleared.agent.mcp_servers == [] and cleared.agent.tools == []


def test_mcp_oauth_validate_without_a_bridge_is_a_typed_503(client, environment):
    v = client.beta.vaults.create(display_name="mcp", metadata={PIN: environment.id})
    c = client.beta.vaults.credentials.create(
        v.id, metadata={KV_PATH: "team/tickets"},
        auth={"type": "static_bearer", "mcp_server_url": TICKETS["url"]})
    with pytest.raises(anthropic.APIStatusError) as e:
        client.beta.vaults.credentials.mcp_oauth_validate(c.id, vault_id=v.id)
    err = e.value
    assert err.status_code == 503
    assert err.error_code == "vault_bridge_unavailable"
    message = err.body["error"]["message"]
    assert message.startswith(f"credential {c.id} of vault {v.id} was not validated: "
                              f"no vault-bridge of environment {environment.id} is connected"), message
    assert err.response.headers["x-should-retry"] == "false"

    env_var = client.beta.vaults.credentials.create(
        v.id, metadata={KV_PATH: "team/npm"},
        auth={"type": "environment_variable", "secret_name": "NPM_TOKEN",
              "networking": {"type": "limited", "allowed_hosts": ["registry.npmjs.org"]}})
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.vaults.credentials.mcp_oauth_validate(env_var.id, vault_id=v.id)
    assert e.value.body["error"]["message"].startswith("auth.type: ")

    loose = client.beta.vaults.create(display_name="loose")
    lc = client.beta.vaults.credentials.create(
        loose.id, metadata={KV_PATH: "team/wiki"}, auth={"type": "static_bearer", "mcp_server_url": WIKI["url"]})
    with pytest.raises(anthropic.APIStatusError) as e:
        client.beta.vaults.credentials.mcp_oauth_validate(lc.id, vault_id=loose.id)
    assert e.value.status_code == 503 and e.value.error_code == "vault_bridge_unavailable"
    assert f"vault {loose.id} is not pinned to an environment" in e.value.body["error"]["message"]

    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.credentials.mcp_oauth_validate("vcrd_nope", vault_id=v.id)


# --- mcp_oauth_validate through the real path: control plane -> tunnel -> sandbox-agent -> vault-bridge -> MCP server


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bridge_deployment(fake_model):
    """A control plane with an enrolled sandbox-agent whose `[bridge]` is a real
    `vault-bridge serve`, and the real `tickets` MCP server (official `mcp`
    SDK, Streamable HTTP on loopback, static bearer token)."""
    executor = os.environ.get("AIRLOCK_EXECUTOR_PATH")
    image = os.environ.get("AIRLOCK_SANDBOX_IMAGE")
    if not executor or not image:
        pytest.fail("AIRLOCK_EXECUTOR_PATH / AIRLOCK_SANDBOX_IMAGE unset: source /work/notes/test-env.sh")
    d = type("D", (), {})()
    d.state = tempfile.TemporaryDirectory(prefix="airlock-py-mcp-")
    state = pathlib.Path(d.state.name)
    d.requests_log = state / "mcp" / "requests.jsonl"
    d.token = f"mcp-canary-{uuid.uuid4().hex}"
    port = _free_port()
    d.mcp_url = f"http://127.0.0.1:{port}/mcp"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    d.mcp_log = open(state / "mcp.log", "ab")
    d.mcp = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mcp" / "servers.py"), "tickets", "--host", "127.0.0.1",
         "--port", str(port), "--state-dir", str(state / "mcp"), "--public-url", f"http://127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=d.mcp_log, stderr=d.mcp_log,
        env={**env, "MCP_TEST_TOKEN": d.token, "MCP_TEST_ADMIN_TOKEN": uuid.uuid4().hex, "PYTHONUNBUFFERED": "1"})
    d.bridge = VaultBridge()
    tunnel, enroll = _free_port(), _free_port()
    while enroll == tunnel:
        enroll = _free_port()
    d.cp = ControlPlane(fake_model.base_url, tunnel_port=tunnel, enroll_port=enroll)
    d.client = d.cp.client(timeout=120)
    d.environment = d.client.beta.environments.create(name=f"mcp-{time.monotonic_ns()}")
    join = d.cp.cli("tokens", "create", "--environment", d.environment.id, "--json")["join_string"]
    a = state / "agent"
    a.mkdir()
    config = a / "agent.toml"
    config.write_text(
        f'data_dir = "{a / "data"}"\n'
        f'[sandbox]\nexecutor_path = "{executor}"\ndefault_image = "{image}"\n'
        f'[policy]\nallowed_images = ["{image}"]\n' + d.bridge.agent_toml
    )
    subprocess.run([binary("sandbox-agent"), "--config", str(config), "enroll", "--join", join],
                   check=True, capture_output=True, timeout=60)
    d.agent_log_path = a / "agent.log"
    agent_log = open(d.agent_log_path, "ab")
    d.agent = subprocess.Popen([binary("sandbox-agent"), "--config", str(config), "run"],
                               stdout=agent_log, stderr=agent_log, stdin=subprocess.DEVNULL,
                               env={**env, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 60
        while not d.cp.cli("agents", "list", "--json"):
            assert d.agent.poll() is None, f"the sandbox-agent exited:\n{d.agent_log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the sandbox-agent did not connect"
            time.sleep(0.2)
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert d.mcp.poll() is None, f"the MCP server exited:\n{(state / 'mcp.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline + 30, "the MCP server did not listen"
                time.sleep(0.2)
        yield d
    finally:
        d.client.close()
        for p in (d.agent, d.mcp):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        agent_log.close()
        d.mcp_log.close()
        d.cp.stop()
        d.bridge.stop()
        d.cp.dir.cleanup()
        d.bridge.dir.cleanup()
        d.state.cleanup()


def test_mcp_oauth_validate_is_probed_by_the_bridge(bridge_deployment):
    d = bridge_deployment
    client = d.client
    good_vault = client.beta.vaults.create(display_name="good", metadata={PIN: d.environment.id})
    good = client.beta.vaults.credentials.create(
        good_vault.id, auth={"type": "static_bearer", "mcp_server_url": d.mcp_url, "token": d.token})
    seen = len(d.requests_log.read_text().splitlines()) if d.requests_log.exists() else 0
    v = client.beta.vaults.credentials.mcp_oauth_validate(good.id, vault_id=good_vault.id)
    probes = [json.loads(l) for l in d.requests_log.read_text().splitlines()[seen:]]
    assert probes and all(r["authorized"] and r["status"] < 400 for r in probes), probes
    assert any("initialize" in r["rpc"] or "tools/list" in r["rpc"] for r in probes), probes
    assert v.type == "vault_credential_validation"
    assert (v.credential_id, v.vault_id) == (good.id, good_vault.id)
    assert v.status == "valid", v
    assert v.has_refresh_token is False

    wrong = f"wrong-{uuid.uuid4().hex}"
    bad_vault = client.beta.vaults.create(display_name="bad", metadata={PIN: d.environment.id})
    bad = client.beta.vaults.credentials.create(
        bad_vault.id, auth={"type": "static_bearer", "mcp_server_url": d.mcp_url, "token": wrong})
    raw = client.beta.vaults.credentials.with_raw_response.mcp_oauth_validate(bad.id, vault_id=bad_vault.id)
    v = raw.parse()
    assert v.status == "invalid", v
    assert v.mcp_probe is not None and v.mcp_probe.method in ("initialize", "tools/list")
    assert v.mcp_probe.http_response is not None and v.mcp_probe.http_response.status_code == 401
    assert json.loads(d.requests_log.read_text().splitlines()[-1])["status"] == 401, "the server refused the probe"
    assert wrong not in raw.http_response.text and d.token not in raw.http_response.text

    # neither token reached the control plane's log or data directory
    log = d.cp.log_path.read_bytes()
    assert d.token.encode() not in log and wrong.encode() not in log
    for p in pathlib.Path(d.cp.dir.name).rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert d.token.encode() not in data and wrong.encode() not in data, p
