"""Session resources (`github_repository`) through the official anthropic SDK
(2.12.0, strict response validation) against a real `control-plane serve`.

The control plane stores resource metadata only, in the session. A
repository's `authorization_token` is write-only: it goes to the vault-bridges
of the session's environment through the secret relay. With no bridge
connected (the production relay today) a token-bearing request is refused
(503, `vault_bridge_unavailable`): no session is created, a rotation leaves
the resource as it was. The canary token must appear in no response, no line
of the control plane's log (run at debug level here) and no file of its data
directory. Public repositories, or hosts whose credential comes from the
bridge's own configuration, need no token and work now.
"""

import os
import pathlib
import uuid

import anthropic
import pytest

from conftest import ControlPlane

CANARY = f"ghp_canary_{uuid.uuid4().hex}"


def files_containing(root, needle):
    needle = needle.encode()
    return [str(p) for p in pathlib.Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def debug_plane(fake_model):
    """A control plane logging at debug level, so the canary check covers every log line."""
    old = os.environ.get("RUST_LOG")
    os.environ["RUST_LOG"] = "debug"
    try:
        cp = ControlPlane(fake_model.base_url)
    finally:
        if old is None:
            os.environ.pop("RUST_LOG", None)
        else:
            os.environ["RUST_LOG"] = old
    yield cp
    code = cp.stop()
    log = cp.log_path.read_text()
    assert CANARY not in log, "the canary token is in the control plane's log"
    assert files_containing(cp.dir.name, CANARY) == [], "the canary token is in a file of the control plane"
    cp.dir.cleanup()
    assert code == 0, f"control-plane did not shut down gracefully (exit {code}):\n{log[-4000:]}"


@pytest.fixture
def dclient(debug_plane):
    with debug_plane.client() as c:
        yield c


@pytest.fixture
def agent_env(dclient):
    agent = dclient.beta.agents.create(name=f"coder-{uuid.uuid4().hex[:8]}", model="claude-sonnet-4-5")
    env = dclient.beta.environments.create(name=f"env-{uuid.uuid4().hex}", config={"type": "self_hosted"})
    return agent, env


def assert_no_canary(debug_plane, *texts):
    for t in texts:
        assert CANARY not in t
    assert CANARY.encode() not in debug_plane.log_path.read_bytes(), "the canary token is in the log"
    assert files_containing(debug_plane.dir.name, CANARY) == [], "the canary token is in a file"


def test_resources_on_the_session_and_the_resource_api(dclient, agent_env, debug_plane):
    agent, env = agent_env
    s = dclient.beta.sessions.create(
        agent=agent.id,
        environment_id=env.id,
        resources=[
            {"type": "github_repository", "url": "https://github.com/acme/widgets.git",
             "checkout": {"type": "branch", "name": "main"}},
            {"type": "github_repository", "url": "https://gitea.corp.example:3000/team/tools",
             "checkout": {"type": "commit", "sha": "0123456789abcdef0123456789abcdef01234567"},
             "mount_path": "/src/tools"},
            {"type": "github_repository", "url": "https://gitlab.corp.example/group/sub/lib"},
        ],
    )
    assert [r.type for r in s.resources] == ["github_repository"] * 3
    widgets, tools, lib = s.resources
    assert all(r.id.startswith("sesrsc_") for r in s.resources)
    assert widgets.url == "https://github.com/acme/widgets.git" and widgets.mount_path == "/workspace/widgets"
    assert widgets.checkout.type == "branch" and widgets.checkout.name == "main"
    assert tools.checkout.type == "commit" and tools.checkout.sha == "0123456789abcdef0123456789abcdef01234567"
    assert tools.mount_path == "/src/tools"
    assert lib.mount_path == "/workspace/lib" and lib.checkout is None
    assert dclient.beta.sessions.retrieve(s.id).resources == s.resources

    # list: all of them (the SDK follows next_page), and in pages
    assert [r.id for r in dclient.beta.sessions.resources.list(s.id)] == [r.id for r in s.resources]
    first = dclient.beta.sessions.resources.list(s.id, limit=2)
    assert [r.id for r in first.data] == [widgets.id, tools.id] and first.next_page
    assert [r.id for r in first] == [r.id for r in s.resources], "auto-pagination yields each resource once"

    got = dclient.beta.sessions.resources.retrieve(tools.id, session_id=s.id)
    assert got == tools
    with pytest.raises(anthropic.NotFoundError):
        dclient.beta.sessions.resources.retrieve("sesrsc_nope", session_id=s.id)

    # rotation: no bridge takes the token, so 503 and the resource is unchanged
    with pytest.raises(anthropic.APIStatusError) as e:
        dclient.beta.sessions.resources.update(widgets.id, session_id=s.id, authorization_token=CANARY)
    assert e.value.status_code == 503 and e.value.error_code == "vault_bridge_unavailable"
    message = e.value.body["error"]["message"]
    assert message.startswith(f"authorization_token: no vault-bridge of environment {env.id} is connected")
    assert widgets.url in message
    assert dclient.beta.sessions.resources.retrieve(widgets.id, session_id=s.id) == widgets
    assert_no_canary(debug_plane, e.value.response.text)

    # only file resources can be added, and there is no Files API
    with pytest.raises(anthropic.BadRequestError) as e:
        dclient.beta.sessions.resources.add(s.id, type="file", file_id="file_123")
    assert e.value.body["error"]["message"] == "type: file resources are not supported: no Files API"

    deleted = dclient.beta.sessions.resources.delete(tools.id, session_id=s.id)
    assert deleted.id == tools.id and deleted.type == "session_resource_deleted"
    assert [r.id for r in dclient.beta.sessions.resources.list(s.id)] == [widgets.id, lib.id]
    assert [r.id for r in dclient.beta.sessions.retrieve(s.id).resources] == [widgets.id, lib.id]
    with pytest.raises(anthropic.NotFoundError):
        dclient.beta.sessions.resources.delete(tools.id, session_id=s.id)


def test_a_token_with_no_bridge_creates_no_session_and_leaves_no_trace(dclient, agent_env, debug_plane):
    agent, env = agent_env
    before = [x.id for x in dclient.beta.sessions.list()]
    with pytest.raises(anthropic.APIStatusError) as e:
        dclient.beta.sessions.create(
            agent=agent.id,
            environment_id=env.id,
            resources=[{"type": "github_repository", "url": "https://git.corp.example/team/private.git",
                        "authorization_token": CANARY}],
        )
    err = e.value
    assert err.status_code == 503 and err.error_code == "vault_bridge_unavailable"
    message = err.body["error"]["message"]
    assert message.startswith(
        f"resources.0.authorization_token: no vault-bridge of environment {env.id} is connected")
    assert "the session was not created and nothing was stored" in message
    assert [x.id for x in dclient.beta.sessions.list()] == before, "a session was stored"
    log = debug_plane.log_path.read_text()
    assert "repository token refused" in log and "DEBUG" in log, "the log checked for the canary is the real one"
    assert_no_canary(debug_plane, err.response.text)


def test_invalid_resources_are_refused_naming_the_field(dclient, agent_env, debug_plane):
    agent, env = agent_env
    cases = [
        ([{"type": "file", "file_id": "file_1"}], "resources.0.type: file resources are not supported: no Files API"),
        ([{"type": "memory_store", "memory_store_id": "memstore_1"}],
         "resources.0.type: memory_store resources are not supported"),
        ([{"type": "github_repository", "url": f"https://x:{CANARY}@git.example/o/r"}],
         "resources.0.url: must not carry credentials"),
        ([{"type": "github_repository", "url": "http://git.example/o/r"}], "resources.0.url: must be an https:// URL"),
        ([{"type": "github_repository", "url": "https://git.example/o/r?x=1"}], "resources.0.url: must not have a query"),
        ([{"type": "github_repository", "url": "https://git.example/o/r", "mount_path": "relative"}],
         "resources.0.mount_path: must be an absolute path"),
        ([{"type": "github_repository", "url": "https://a.example/o/r"},
          {"type": "github_repository", "url": "https://b.example/p/r.git"}],
         "resources.1.mount_path: /workspace/r overlaps"),
        ([{"type": "github_repository", "url": "https://git.example/o/r",
           "authorization_token": f"{CANARY} with spaces"}],
         "resources.0.authorization_token: must be printable ASCII"),
    ]
    for resources, starts in cases:
        with pytest.raises(anthropic.BadRequestError) as e:
            dclient.beta.sessions.create(agent=agent.id, environment_id=env.id, resources=resources)
        message = e.value.body["error"]["message"]
        assert message.startswith(starts), message
        assert_no_canary(debug_plane, e.value.response.text)
