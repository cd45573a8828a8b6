"""Issue 9, Git through the official SDK: a session with a
`github_repository` resource carrying an `authorization_token`, on a real
deployment (control-plane serve, an enrolled sandbox-agent with `[bridge]`,
a real `vault-bridge serve` with the file backend) and a real Git server
(`git-server`: git http-backend behind nginx + fcgiwrap over HTTPS with a
test CA the bridge trusts, requiring the token). The model is the scripted
fake (`fake-model-bash`: one bash call per `$ ` line of the prompt).

- the repository is cloned into /workspace/app at provision (no
  session.error); the agent's bash runs `git log`, edits, commits and
  `git push`es; the push is in the server's bare repository; the remote is
  the real URL;
- the token is nowhere: not in any event (tool inputs and results
  included), not in the sandbox (environment, /proc/*/environ and cmdline,
  `git config --show-origin -l`, any file under /workspace /home /tmp /etc
  /run, read from the host with `docker exec`), not in the control plane's
  data dir or log, not in the agent's log.

The same with the token in a vault credential bound to the repository URL
(`static_bearer`, metadata `airlock.http_auth = "basic"`), relayed to the
bridge through the API, and a resource without `authorization_token`.

Needs Docker, the default sandbox image (AIRLOCK_SANDBOX_IMAGE, git inside),
AIRLOCK_EXECUTOR_PATH, nginx + fcgiwrap (scripts/setup.d).
"""

import json
import subprocess

import anthropic
import pytest

from conftest import Fixture, bridged_deployment, files_bytes, user_message

WAIT = 180


@pytest.fixture(scope="module")
def git_deployment():
    """The deployment and two Git servers: `git` takes the bridge's default
    basic user-id (`x-access-token`), `gitlab` only `oauth2`."""
    upstream = Fixture("git-server")
    try:
        other = Fixture("git-server", args=["--user", "oauth2"])
    except Exception:
        upstream.stop()
        raise
    try:
        cas = [upstream.facts["ca_file"], other.facts["ca_file"]]
        with bridged_deployment("fake-model-bash", cas, "git", WAIT) as d:
            d.git, d.gitlab = upstream, other
            yield d
    finally:
        other.stop()
        upstream.stop()


COMMANDS = [
    "cd /workspace/app && git log --format=%s -1",
    "cd /workspace/app && git remote get-url origin",
    "cd /workspace/app && echo \"from the agent $(date +%s%N)\" > CHANGE.txt && git add CHANGE.txt"
    " && git -c user.name=agent -c user.email=agent@airlock.invalid commit -q -m 'change from the sdk session'"
    " && git push -q origin HEAD:main 2>&1; echo push-exit=$?",
    "env",
    "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'",
    "cd /workspace/app && git config --show-origin -l",
]


def run_git_session(d, s, server):
    """Sends COMMANDS to session `s` and checks the work on `server` (a
    git-server fixture): `git log` in the clone, the remote is the real URL,
    the push is on the server. Returns the session's events as JSON text and
    the server's new `main`."""
    url, c = server.facts["url"], d.client
    prompt = "Work on the repository:\n" + "\n".join(f"$ {cmd}" for cmd in COMMANDS)
    with c.beta.sessions.events.stream(s.id) as stream:
        c.beta.sessions.events.send(s.id, events=[user_message(prompt)])
        for ev in stream:
            if ev.type == "session.status_idle" and ev.stop_reason.type != "requires_action":
                assert ev.stop_reason.type == "end_turn", ev
                break
    events = list(c.beta.sessions.events.list(s.id))
    dump = json.dumps([e.model_dump(mode="json") for e in events])
    errors = [e for e in events if e.type == "session.error"]
    assert not errors, f"{errors}\nagent log:\n{d.agent_log_path.read_text()[-4000:]}"
    uses = [e for e in events if e.type == "agent.tool_use"]
    results = {e.tool_use_id: e for e in events if e.type == "agent.tool_result"}
    assert len(uses) == len(COMMANDS), dump[-4000:]

    def out(i):
        r = results[uses[i].id]
        assert not r.is_error, r
        return "".join(b.text for b in r.content if b.type == "text").strip()

    assert out(0) == "seed", "git log in the clone"
    assert out(1) == url, "the remote stays the real url"
    assert "push-exit=0" in out(2), out(2)
    bare_log = subprocess.run(["git", "--git-dir", server.facts["bare"], "log", "--format=%s", "-1", "main"],
                              capture_output=True, check=True, timeout=30).stdout.decode().strip()
    assert bare_log == "change from the sdk session", "the push is on the server"
    return dump, server_head(server)


def server_head(server):
    return subprocess.run(["git", "--git-dir", server.facts["bare"], "rev-parse", "main"],
                          capture_output=True, check=True, timeout=30).stdout.decode().strip()


def assert_token_nowhere(d, token, dump):
    """The token is in no event (tool inputs and results), nothing in the
    session's sandbox (read from the host with `docker exec`, so the probe
    itself carries no token), no file or log of the control plane, no log of
    the agent or the bridge."""
    assert token not in dump
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=airlock.agent_id={d.agent_id}"],
                         capture_output=True, check=True, timeout=60).stdout.decode().split()
    assert ids, "the session's sandbox runs"
    for cid in ids:
        for cmd in (["sh", "-c", "cat /proc/*/environ /proc/*/cmdline 2>/dev/null; true"],
                    ["tar", "-c", "--ignore-failed-read", "-f", "-", "/workspace", "/home", "/tmp", "/etc", "/run"]):
            seen = subprocess.run(["docker", "exec", cid, *cmd], capture_output=True, timeout=120).stdout
            assert seen, cmd
            assert token.encode() not in seen, f"token found in the sandbox by {cmd}"
    assert token.encode() not in files_bytes(d.cp.dir.name)
    assert token.encode() not in d.agent_log_path.read_bytes()
    assert token.encode() not in d.bridge.log_path.read_bytes()


def test_sdk_session_clones_commits_and_pushes_without_seeing_the_token(git_deployment):
    d = git_deployment
    token, url = d.git.facts["token"], d.git.facts["url"]
    c = d.client
    agent = c.beta.agents.create(name="git", model="claude-fake", tools=[{"type": "agent_toolset_20260401"}])
    s = c.beta.sessions.create(agent=agent.id, environment_id=d.environment.id,
                               resources=[{"type": "github_repository", "url": url, "authorization_token": token}])
    assert token not in s.model_dump_json()
    dump, _ = run_git_session(d, s, d.git)
    assert_token_nowhere(d, token, dump)


def test_a_vault_credential_bound_to_the_repository_serves_git_as_basic_auth(git_deployment):
    """Issue 9 item 4 with the token in a vault credential bound to the
    repository: a `static_bearer` whose `mcp_server_url` is the repository
    URL, metadata `airlock.http_auth = "basic"` and `airlock.basic_username =
    "oauth2"` (the only user-id this server takes, so the bridge's default
    would be refused), relayed to the bridge through the API; the session
    names the vault and a `github_repository` resource without
    `authorization_token`."""
    d = git_deployment
    token, url = d.gitlab.facts["token"], d.gitlab.facts["url"]
    assert d.gitlab.facts["user"] == "oauth2"
    c = d.client
    vault = c.beta.vaults.create(display_name="git", metadata={"airlock.environment_id": d.environment.id})
    # Validated at the API, naming the field.
    for meta, field in (({"airlock.http_auth": "digest"}, "metadata.airlock.http_auth:"),
                        ({"airlock.basic_username": "oauth2"}, "metadata.airlock.basic_username:"),
                        ({"airlock.http_auth": "basic", "airlock.basic_username": "a:b"},
                         "metadata.airlock.basic_username:")):
        with pytest.raises(anthropic.BadRequestError) as e:
            c.beta.vaults.credentials.create(vault.id, display_name="bad", metadata=meta,
                                             auth={"type": "static_bearer", "mcp_server_url": url, "token": token})
        assert e.value.body["error"]["message"].startswith(field), e.value.body
    meta = {"airlock.http_auth": "basic", "airlock.basic_username": "oauth2"}
    cred = c.beta.vaults.credentials.create(vault.id, display_name="git server", metadata=meta,
                                            auth={"type": "static_bearer", "mcp_server_url": url, "token": token})
    assert token not in cred.model_dump_json()
    assert cred.metadata == meta
    before = server_head(d.gitlab)
    agent = c.beta.agents.create(name="git-vault", model="claude-fake", tools=[{"type": "agent_toolset_20260401"}])
    s = c.beta.sessions.create(agent=agent.id, environment_id=d.environment.id, vault_ids=[vault.id],
                               resources=[{"type": "github_repository", "url": url}])
    assert s.vault_ids == [vault.id]
    dump, after = run_git_session(d, s, d.gitlab)
    assert after != before, "a new commit was pushed"
    assert_token_nowhere(d, token, dump)


def test_repository_without_its_token_is_a_session_error_and_the_session_goes_on(git_deployment):
    d = git_deployment
    url = d.git.facts["url"]
    c = d.client
    agent = c.beta.agents.create(name="git-no-token", model="claude-fake", tools=[{"type": "agent_toolset_20260401"}])
    s = c.beta.sessions.create(agent=agent.id, environment_id=d.environment.id,
                               resources=[{"type": "github_repository", "url": url}])
    with c.beta.sessions.events.stream(s.id) as stream:
        c.beta.sessions.events.send(s.id, events=[user_message("Check:\n$ ls /workspace; echo listed")])
        for ev in stream:
            if ev.type == "session.status_idle" and ev.stop_reason.type != "requires_action":
                assert ev.stop_reason.type == "end_turn", ev
                break
    events = list(c.beta.sessions.events.list(s.id))
    errors = [e for e in events if e.type == "session.error"]
    assert len(errors) == 1, [e.model_dump(mode="json") for e in events]
    err = errors[0].error
    assert err.type == "repository_authentication_error", err
    assert err.repository_url == url
    assert err.retry_status.type == "retrying"
    results = [e for e in events if e.type == "agent.tool_result"]
    assert len(results) == 1 and "listed" in json.dumps(results[0].model_dump(mode="json")), "the session went on"
