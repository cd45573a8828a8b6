"""The public API through the official anthropic SDK (strict response
validation): agents, environments, sessions, events (send, list, stream,
resume), and the error cases."""

import time

import anthropic
import pytest

from conftest import MAX_BODY_BYTES, user_message


def test_agents_versions_and_archive(client, agent):
    assert agent.type == "agent" and agent.id.startswith("agent_") and agent.version == 1
    toolset = agent.tools[0]
    assert toolset.type == "agent_toolset_20260401"
    bash = next(c for c in toolset.configs if c.name == "bash")
    assert bash.permission_policy.type == "always_ask"
    assert toolset.default_config.permission_policy.type == "always_allow"
    assert agent.tools[1].name == "lookup"

    v2 = client.beta.agents.update(agent.id, version=1, system="Be brief.", metadata={"team": "infra"})
    assert v2.version == 2 and v2.system == "Be brief." and v2.metadata == {"team": "infra"}
    assert client.beta.agents.retrieve(agent.id, version=1).system == "You write files."
    assert client.beta.agents.retrieve(agent.id).version == 2
    with pytest.raises(anthropic.ConflictError) as e:
        client.beta.agents.update(agent.id, version=1, name="stale")
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert [v.version for v in client.beta.agents.versions.list(agent.id)] == [2, 1]
    assert any(a.id == agent.id for a in client.beta.agents.list())

    archived = client.beta.agents.archive(agent.id)
    assert archived.archived_at is not None
    assert all(a.id != agent.id for a in client.beta.agents.list())
    assert any(a.id == agent.id for a in client.beta.agents.list(include_archived=True))
    with pytest.raises(anthropic.BadRequestError):
        client.beta.agents.update(agent.id, name="after archive")


def test_agents_list_auto_pagination(client):
    ids = [client.beta.agents.create(name=f"p{i}", model="m").id for i in range(5)]
    first = client.beta.agents.list(limit=2)
    assert len(first.data) == 2 and first.next_page
    seen = [a.id for a in client.beta.agents.list(limit=2)]  # the SDK follows next_page
    assert seen[:5] == list(reversed(ids)), "newest first, every agent once"


def test_environments(client):
    name = f"prod-{time.monotonic_ns()}"
    env = client.beta.environments.create(name=name, description="d", metadata={"a": "1"})
    assert env.config.type == "self_hosted" and env.id.startswith("env_")
    with pytest.raises(anthropic.ConflictError) as e:
        client.beta.environments.create(name=name)
    assert e.value.body["error"]["message"].startswith("name:")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.beta.environments.create(name=name + "-cloud", config={"type": "cloud"})
    assert e.value.body["error"]["message"].startswith("config.type:")
    updated = client.beta.environments.update(env.id, metadata={"a": None, "b": "2"}, description=None)
    assert updated.metadata == {"b": "2"} and updated.description is None
    assert client.beta.environments.retrieve(env.id).name == name
    assert any(e.id == env.id for e in client.beta.environments.list())
    assert client.beta.environments.archive(env.id).archived_at is not None
    deleted = client.beta.environments.delete(env.id)
    assert deleted.type == "environment_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.environments.retrieve(env.id)


def test_sessions(client, agent, environment):
    s = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="t", metadata={"k": "v"})
    assert s.status == "idle" and s.agent.id == agent.id and s.agent.version == 1
    assert s.agent.tools[0].configs[0].permission_policy.type == "always_ask"
    client.beta.agents.update(agent.id, system="v2")
    pinned = client.beta.sessions.create(agent={"type": "agent", "id": agent.id, "version": 1}, environment_id=environment.id)
    latest = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    assert (pinned.agent.version, latest.agent.version) == (1, 2)
    assert client.beta.sessions.retrieve(s.id).title == "t"

    page = client.beta.sessions.list(limit=1)
    assert page.data[0].id == latest.id and page.next_page
    listed = [x.id for x in client.beta.sessions.list(limit=1, agent_id=agent.id)]
    assert listed[:3] == [latest.id, pinned.id, s.id]
    assert [x.id for x in client.beta.sessions.list(agent_id=agent.id, agent_version=1, order="asc")][:2] == [s.id, pinned.id]
    assert all(x.status == "idle" for x in client.beta.sessions.list(statuses=["idle"]))

    u = client.beta.sessions.update(s.id, title="renamed", metadata={"k": None, "n": "1"})
    assert u.title == "renamed" and u.metadata == {"n": "1"}
    archived = client.beta.sessions.archive(s.id)
    assert archived.status == "terminated" and archived.archived_at is not None
    types = [e.type for e in client.beta.sessions.events.list(s.id)]
    assert types[-1] == "session.status_terminated"
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.events.send(s.id, events=[user_message("too late")])
    assert client.beta.sessions.delete(s.id).type == "session_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(s.id)


USER_TYPES = ["user.message", "user.interrupt"]


def test_events_send_and_list(client, session):
    sent = client.beta.sessions.events.send(session.id, events=[user_message("one"), user_message("two"), {"type": "user.interrupt"}])
    assert [e.type for e in sent.data] == ["user.message", "user.message", "user.interrupt"]
    assert all(e.processed_at is None and e.id.startswith("sevt_") for e in sent.data)
    ids = [e.id for e in sent.data]
    # the harness may be appending its own events meanwhile: compare the user's
    assert [e.id for e in client.beta.sessions.events.list(session.id, types=USER_TYPES)] == ids
    assert [e.id for e in client.beta.sessions.events.list(session.id, types=USER_TYPES, limit=1)] == ids, "pages followed"
    only = client.beta.sessions.events.list(session.id, types=["user.interrupt"])
    assert [e.type for e in only.data] == ["user.interrupt"]
    desc = client.beta.sessions.events.list(session.id, order="desc", types=USER_TYPES)
    assert [e.id for e in desc.data] == list(reversed(ids))
    seqs = [e.model_extra["seq"] for e in client.beta.sessions.events.list(session.id)]
    assert seqs == list(range(1, len(seqs) + 1)), "every event, gap-free, in order"
    # created_at filters compare processed_at
    assert client.beta.sessions.events.list(session.id, created_at_lt="2000-01-01T00:00:00Z").data == []
    assert all(e.processed_at is not None
               for e in client.beta.sessions.events.list(session.id, created_at_gte="2000-01-01T00:00:00Z").data)


class Reader:
    """Reads a stream, telling appended events (new ids, in seq order) from
    the processed echoes of user events (an id seen before)."""

    def __init__(self):
        self.ids, self.appended = set(), []

    def read(self, stream, until):
        for ev in stream:
            if ev.id in self.ids:
                assert ev.type.startswith("user.") and ev.processed_at is not None, ev
                continue
            self.ids.add(ev.id)
            self.appended.append(ev)
            if until(ev):
                return


def test_stream_live_and_resume_without_loss(client, session):
    before = client.beta.sessions.events.send(session.id, events=[user_message("before the stream")])
    before_seq = before.data[0].model_extra["seq"]
    first = Reader()
    # live: the stream starts after what already happened; it drops after two echoes
    with client.beta.sessions.events.stream(session.id) as stream:
        sent = client.beta.sessions.events.send(session.id, events=[user_message(f"m{i}") for i in range(3)])
        first.read(stream, lambda ev: ev.id == sent.data[1].id)
    assert all(e.model_extra["seq"] > before_seq for e in first.appended)
    assert [e.id for e in first.appended if e.type == "user.message"][:2] == [e.id for e in sent.data[:2]]
    last_seq = first.appended[-1].model_extra["seq"]
    more = client.beta.sessions.events.send(session.id, events=[user_message(f"n{i}") for i in range(2)])
    # resume after the last seq seen (our extension): nothing missing, nothing twice
    rest = Reader()
    with client.beta.sessions.events.stream(session.id, extra_query={"after": last_seq}) as stream:
        rest.read(stream, lambda ev: ev.id == more.data[-1].id)
    seqs = [e.model_extra["seq"] for e in first.appended + rest.appended]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap-free, no repeats: {seqs}"
    listed = {e.model_extra["seq"]: e.id for e in client.beta.sessions.events.list(session.id)}
    assert [e.id for e in first.appended + rest.appended] == [listed[q] for q in seqs]
    assert sent.data[2].id in rest.ids and all(e.id in rest.ids for e in more.data)
    # Last-Event-ID, as an SSE client sends it on reconnect, resumes the same way
    again = Reader()
    with client.beta.sessions.events.stream(session.id, extra_headers={"Last-Event-ID": str(last_seq)}) as stream:
        again.read(stream, lambda ev: True)
    assert again.appended[0].id == rest.appended[0].id


def test_errors_are_4xx_envelopes_naming_the_field(control_plane, client, session):
    cases = [
        (lambda: client.beta.agents.create(name="x", model="m", tools=[{"type": "teleporter"}]), anthropic.BadRequestError, "tools.0.type:"),
        (lambda: client.beta.agents.create(name="x", model="m", tools=[{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "permission_policy": {"type": "sometimes"}}]}]), anthropic.BadRequestError, "tools.0.configs.0.permission_policy.type:"),
        (lambda: client.beta.agents.create(name="x", model=7), anthropic.BadRequestError, "model:"),
        (lambda: client.post("/v1/agents", body={"model": "m"}, cast_to=object), anthropic.BadRequestError, "name: field required"),
        (lambda: client.post("/v1/environments", body={"name": 12}, cast_to=object), anthropic.BadRequestError, "name: expected a string"),
        (lambda: client.beta.sessions.events.send(session.id, events=[{"type": "user.telepathy"}]), anthropic.BadRequestError, 'events.0.type: unknown event type "user.telepathy"'),
        (lambda: client.beta.sessions.events.send(session.id, events=[{"type": "user.message", "content": "not a list"}]), anthropic.BadRequestError, "events.0.content:"),
        (lambda: client.beta.sessions.events.send(session.id, events=[{"type": "user.tool_confirmation", "tool_use_id": "sevt_nope", "result": "allow"}]), anthropic.BadRequestError, "events.0.tool_use_id:"),
        (lambda: client.beta.sessions.create(agent="agent_nope", environment_id="env_nope"), anthropic.NotFoundError, "agent:"),
        (lambda: client.beta.sessions.retrieve("sesn_nope"), anthropic.NotFoundError, "session sesn_nope"),
        (lambda: client.beta.agents.retrieve("agent_nope"), anthropic.NotFoundError, "agent agent_nope"),
        (lambda: client.beta.sessions.events.list(session.id, limit=100000), anthropic.BadRequestError, "limit:"),
        (lambda: client.beta.sessions.events.send(session.id, events=[user_message("x" * (MAX_BODY_BYTES + 1))]), anthropic.APIStatusError, "request body is larger"),
    ]
    for call, exc, starts in cases:
        with pytest.raises(exc) as e:
            call()
        status = e.value.status_code
        assert 400 <= status < 500, (starts, status)
        body = e.value.body
        assert body["type"] == "error" and body["request_id"].startswith("req_"), body
        assert body["error"]["message"].startswith(starts), (starts, body)
    with pytest.raises(anthropic.APIStatusError) as e:
        client.beta.sessions.events.send(session.id, events=[user_message("x" * (MAX_BODY_BYTES + 1))])
    assert e.value.status_code == 413 and e.value.body["error"]["type"] == "request_too_large"


def raw(control_plane, method, path, headers=None, body=None):
    """A request without the SDK (no key at all); returns (status, json)."""
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(control_plane.base_url + path, method=method, headers=headers or {},
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_unauthenticated_callers_learn_nothing(control_plane, session):
    bodies = []
    with control_plane.client(api_key="sk-airlock-wrong") as bad:
        for call in [
            lambda: bad.beta.sessions.retrieve(session.id),
            lambda: bad.beta.sessions.retrieve("sesn_does_not_exist"),
            lambda: bad.beta.agents.list(),
            lambda: bad.beta.sessions.events.send(session.id, events=[user_message("x")]),
        ]:
            with pytest.raises(anthropic.AuthenticationError) as e:
                call()
            body = dict(e.value.body)
            assert body.pop("request_id").startswith("req_")
            bodies.append(body)
    assert all(b == bodies[0] for b in bodies), bodies
    # no key at all: 401 whether the id exists, does not, or the route does not
    answers = []
    for method, path in [("GET", f"/v1/sessions/{session.id}"), ("GET", "/v1/sessions/sesn_nope"),
                         ("GET", "/v1/nowhere"), ("DELETE", f"/v1/sessions/{session.id}")]:
        status, body = raw(control_plane, method, path)
        assert status == 401 and body["error"]["type"] == "authentication_error", (path, body)
        body.pop("request_id")
        answers.append(body)
    assert all(a == answers[0] for a in answers), answers
    # revoking a key stops it at once
    made = control_plane.cli("api-keys", "create", "--name", "temp", "--json")
    with control_plane.client(api_key=made["key"]) as c:
        c.beta.agents.list()
        subprocess_revoke(control_plane, made["id"])
        with pytest.raises(anthropic.AuthenticationError):
            c.beta.agents.list()


def subprocess_revoke(cp, key_id):
    import subprocess
    from conftest import binary
    subprocess.run([binary("control-plane"), "--config", str(cp.config), "api-keys", "revoke", key_id],
                   check=True, capture_output=True, timeout=60)
