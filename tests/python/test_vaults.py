"""Vaults and credentials through the official anthropic SDK (2.12.0, strict
response validation) against a real `control-plane serve`.

The control plane stores credential metadata only. With no vault-bridge
connected, a credential that carries a secret is refused (503,
`vault_bridge_unavailable`) and nothing is stored; the canary secret sent in
such a request must appear in no response, no line of the control plane's
log and no file of its data directory. A credential whose secret already
lives in the customer's Vault (metadata `airlock.kv_path`) needs no secret.
"""

import json
import pathlib
import uuid

import anthropic
import pytest

PIN = "airlock.environment_id"
KV_PATH = "airlock.kv_path"


def pinned_vault(client, environment, name="team"):
    return client.beta.vaults.create(display_name=name, metadata={PIN: environment.id})


def files_containing(root, needle):
    needle = needle.encode()
    return [str(p) for p in pathlib.Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_vaults_create_list_update_archive_delete(client):
    v = client.beta.vaults.create(display_name="team", metadata={"owner": "infra", "tmp": "x"})
    assert v.type == "vault" and v.id.startswith("vlt_") and v.archived_at is None
    assert v.metadata == {"owner": "infra", "tmp": "x"}
    assert client.beta.vaults.retrieve(v.id) == v

    u = client.beta.vaults.update(v.id, display_name="team-2", metadata={"tmp": None, "env": "prod"})
    assert u.display_name == "team-2" and u.metadata == {"owner": "infra", "env": "prod"}
    assert u.created_at == v.created_at

    more = [client.beta.vaults.create(display_name=f"v{i}").id for i in range(3)]
    seen = [x.id for x in client.beta.vaults.list(limit=2)]  # the SDK follows next_page
    assert seen[:4] == list(reversed([v.id, *more])), "newest first, every vault once"

    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.vaults.create(display_name="")
    assert e.value.body["error"]["message"].startswith("display_name:")

    archived = client.beta.vaults.archive(v.id)
    assert archived.archived_at is not None
    assert all(x.id != v.id for x in client.beta.vaults.list())
    assert any(x.id == v.id for x in client.beta.vaults.list(include_archived=True))
    with pytest.raises(anthropic.BadRequestError):
        client.beta.vaults.update(v.id, display_name="after archive")

    deleted = client.beta.vaults.delete(v.id)
    assert deleted.id == v.id and deleted.type == "vault_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.retrieve(v.id)


def test_a_secret_with_no_bridge_is_refused_and_leaves_no_trace(client, control_plane, environment):
    v = pinned_vault(client, environment)
    canary = f"canary-{uuid.uuid4().hex}"
    attempts = [
        {"type": "environment_variable", "secret_name": "API_KEY", "secret_value": canary,
         "networking": {"type": "limited", "allowed_hosts": ["api.example.com", "*.example.org"]},
         "injection_location": {"header": True, "body": False}},
        {"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/sse", "token": canary},
        {"type": "mcp_oauth", "mcp_server_url": "https://mcp.example.com/oauth", "access_token": canary,
         "refresh": {"client_id": "cid", "refresh_token": canary, "token_endpoint": "https://idp.example.com/token",
                     "token_endpoint_auth": {"type": "client_secret_post", "client_secret": canary}}},
    ]
    for auth in attempts:
        with pytest.raises(anthropic.APIStatusError) as e:
            client.beta.vaults.credentials.create(v.id, auth=auth, display_name="refused")
        err = e.value
        assert err.status_code == 503, err
        assert err.error_code == "vault_bridge_unavailable"
        message = err.body["error"]["message"]
        assert v.id in message and environment.id in message, message
        assert "nothing was stored" in message
        assert canary not in err.response.text
    # nothing was stored: the credential does not exist, not even as metadata
    assert list(client.beta.vaults.credentials.list(v.id, include_archived=True)) == []

    # the canary is nowhere the control plane writes
    log = control_plane.log_path.read_bytes()
    assert b"vault_bridge_unavailable" in log or v.id.encode() in log, "the refusal is logged (without the secret)"
    assert canary.encode() not in log
    data_dir = pathlib.Path(control_plane.dir.name) / "data"
    assert data_dir.is_dir()
    assert files_containing(data_dir, canary) == []
    assert files_containing(control_plane.dir.name, canary) == []


def test_kv_path_credentials_need_no_secret(client, environment):
    v = pinned_vault(client, environment, "kv")
    c = client.beta.vaults.credentials.create(
        v.id,
        display_name="github",
        metadata={KV_PATH: "team/github"},
        auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/github"},
    )
    assert c.type == "vault_credential" and c.id.startswith("vcrd_") and c.vault_id == v.id
    assert c.auth.type == "static_bearer" and c.auth.mcp_server_url == "https://mcp.example.com/github"
    assert c.metadata == {KV_PATH: "team/github"}
    assert not hasattr(c.auth, "token")
    got = client.beta.vaults.credentials.retrieve(c.id, vault_id=v.id)
    assert got == c

    env_cred = client.beta.vaults.credentials.create(
        v.id,
        metadata={KV_PATH: "team/npm"},
        auth={"type": "environment_variable", "secret_name": "NPM_TOKEN",
              "networking": {"type": "limited", "allowed_hosts": ["registry.npmjs.org"]}},
    )
    assert env_cred.auth.secret_name == "NPM_TOKEN"
    assert env_cred.auth.networking.type == "limited"
    assert env_cred.auth.networking.allowed_hosts == ["registry.npmjs.org"]
    assert env_cred.auth.injection_location.header is True

    assert [x.id for x in client.beta.vaults.credentials.list(v.id)] == [env_cred.id, c.id]
    u = client.beta.vaults.credentials.update(
        env_cred.id, vault_id=v.id, display_name="npm",
        auth={"type": "environment_variable", "networking": {"type": "unrestricted"}},
    )
    assert u.display_name == "npm" and u.auth.networking.type == "unrestricted"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.vaults.credentials.update(
            env_cred.id, vault_id=v.id, auth={"type": "static_bearer", "token": "x"})
    assert e.value.body["error"]["message"].startswith("auth.type:")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.vaults.credentials.create(
            v.id, metadata={KV_PATH: "team/bad"},
            auth={"type": "environment_variable", "secret_name": "X",
                  "networking": {"type": "limited", "allowed_hosts": ["https://registry.npmjs.org:443/"]}})
    assert e.value.body["error"]["message"].startswith("auth.networking.allowed_hosts.0:")
    with pytest.raises(anthropic.ConflictError):
        client.beta.vaults.credentials.create(
            v.id, metadata={KV_PATH: "team/github2"},
            auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/github"})
    # No bridge is connected to this control plane: a 503 naming that.
    with pytest.raises(anthropic.APIStatusError) as e:
        client.beta.vaults.credentials.mcp_oauth_validate(c.id, vault_id=v.id)
    assert e.value.status_code == 503, e.value.body
    assert e.value.body["error"].get("error_code") == "vault_bridge_unavailable" or \
        "vault_bridge_unavailable" in json.dumps(e.value.body), e.value.body

    archived = client.beta.vaults.credentials.archive(c.id, vault_id=v.id)
    assert archived.archived_at is not None
    assert [x.id for x in client.beta.vaults.credentials.list(v.id)] == [env_cred.id]
    deleted = client.beta.vaults.credentials.delete(env_cred.id, vault_id=v.id)
    assert deleted.id == env_cred.id and deleted.type == "vault_credential_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.credentials.retrieve(env_cred.id, vault_id=v.id)


def test_sessions_take_vault_ids(client, agent, environment):
    v = pinned_vault(client, environment, "for-sessions")
    s = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[v.id])
    assert s.vault_ids == [v.id]
    assert client.beta.sessions.retrieve(s.id).vault_ids == [v.id]
    plain = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    assert plain.vault_ids == []
    with pytest.raises(anthropic.NotFoundError) as e:
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=["vlt_missing"])
    assert e.value.body["error"]["message"].startswith("vault_ids.0: vault vlt_missing not found")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.sessions.update(s.id, vault_ids=[])
    assert e.value.body["error"]["message"].startswith("vault_ids:")
    client.beta.vaults.archive(v.id)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[v.id])
    assert "is archived" in e.value.body["error"]["message"]
