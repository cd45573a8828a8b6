"""Fixtures of the SDK acceptance tests: a real `control-plane serve` with a
temp data dir, an API key made with `control-plane api-keys create`, and the
official `anthropic` SDK (pinned by scripts/setup.d/40-python.sh) pointed at
it with strict response validation, so every response must parse into the
SDK's own types.
"""

import contextlib
import json
import os
import pathlib
import queue
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time

import anthropic
import pytest

ROOT = pathlib.Path(os.environ.get("AIRLOCK_ROOT", pathlib.Path(__file__).resolve().parents[2]))
#: Small enough that the oversized-body test stays cheap.
MAX_BODY_BYTES = 262144


def binary(name):
    path = pathlib.Path(os.environ.get("AIRLOCK_BIN_DIR", ROOT / "target" / "debug")) / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build -p control-plane` (scripts/test-all does)")
    return str(path)


class FakeModel:
    """The scripted fake Messages server (`fake-model-sdk`, tests/src/fake_model.rs):
    the control plane's model, so no test ever reaches a real model API."""

    def __init__(self):
        self.proc = subprocess.Popen([binary("fake-model-sdk")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("base_url="):
            self.stop()
            raise RuntimeError(f"fake-model did not start: {line!r}")
        self.base_url = line.split("=", 1)[1]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.terminate()
            self.proc.wait(timeout=20)


class ControlPlane:
    """A running `control-plane serve` on loopback ports chosen by the kernel,
    its model the fake Messages server at `model_base_url`."""

    def __init__(self, model_base_url, extra_toml="", tunnel_port=0, enroll_port=0):
        self.dir = tempfile.TemporaryDirectory(prefix="airlock-py-")
        d = pathlib.Path(self.dir.name)
        self.config = d / "control-plane.toml"
        self.config.write_text(
            f'data_dir = "{d / "data"}"\n'
            "shutdown_grace_seconds = 5\n"
            f'[tunnel]\nlisten = "127.0.0.1:{tunnel_port}"\n'
            f'[enroll]\nlisten = "127.0.0.1:{enroll_port}"\nadvertise_address = "127.0.0.1:{enroll_port}"\n'
            '[pki]\nserver_names = ["localhost", "127.0.0.1"]\n'
            f'[admin]\nsocket = "{d / "admin.sock"}"\n'
            f'[api]\nlisten = "127.0.0.1:0"\nmax_body_bytes = {MAX_BODY_BYTES}\nsse_ping_interval_seconds = 1\n'
            + extra_toml
        )
        self.log_path = d / "control-plane.log"
        self.key = self.cli("api-keys", "create", "--name", "pytest", "--json")["key"]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary("control-plane"), "--config", str(self.config), "serve"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "info"),
                 "ANTHROPIC_BASE_URL": model_base_url, "ANTHROPIC_API_KEY": "sk-fake"},
        )
        facts = self._read_facts(timeout=60)
        self.base_url = f"http://{facts['api_addr']}"

    def _read_facts(self, timeout):
        lines = queue.Queue()

        def pump():
            for line in self.proc.stdout:
                lines.put(line.decode().strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        facts, deadline = {}, time.monotonic() + timeout
        while "api_addr" not in facts:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"control-plane serve did not start; log:\n{self.log_path.read_text()[-4000:]}")
            if "=" in line:
                k, v = line.split("=", 1)
                facts[k] = v
        return facts

    def cli(self, *args):
        out = subprocess.run(
            [binary("control-plane"), "--config", str(self.config), *args],
            capture_output=True, check=True, timeout=60, env={**os.environ, "NO_COLOR": "1"},
        )
        return json.loads(out.stdout)

    def client(self, **kw):
        kw.setdefault("api_key", self.key)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return anthropic.Anthropic(base_url=self.base_url, _strict_response_validation=True, **kw)

    def stop(self):
        """SIGTERM, then wait for the drain; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def fake_model():
    fm = FakeModel()
    yield fm
    fm.stop()


@pytest.fixture(scope="session")
def control_plane(fake_model):
    cp = ControlPlane(fake_model.base_url)
    yield cp
    code = cp.stop()
    log = cp.log_path.read_text()
    cp.dir.cleanup()
    assert code == 0, f"control-plane did not shut down gracefully (exit {code}):\n{log[-4000:]}"


@pytest.fixture
def client(control_plane):
    with control_plane.client() as c:
        yield c


@pytest.fixture
def agent(client):
    return client.beta.agents.create(
        name="coder",
        model="claude-sonnet-4-5",
        system="You write files.",
        tools=[
            {"type": "agent_toolset_20260401",
             "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}]},
            {"type": "custom", "name": "lookup", "description": "Look a word up.",
             "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}},
        ],
    )


@pytest.fixture
def environment(client):
    return client.beta.environments.create(name=f"env-{time.monotonic_ns()}", config={"type": "self_hosted"})


@pytest.fixture
def session(client, agent, environment):
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="pytest")


def user_message(text):
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


class Fixture:
    """A fixture binary of tests/src/bin that prints `key=value` lines then
    `ready` (or just `base_url=…`), and serves until its stdin closes."""

    def __init__(self, name, until="ready", timeout=120, args=()):
        self.proc = subprocess.Popen([binary(name), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.facts, lines = {}, queue.Queue()

        def pump():
            for line in self.proc.stdout:
                lines.put(line.decode().strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while until not in self.facts:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"{name} did not start (facts so far: {sorted(self.facts)})")
            k, _, v = line.partition("=")
            self.facts[k] = v

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.terminate()
            self.proc.wait(timeout=30)


class VaultBridge:
    """A real `vault-bridge serve` with the encrypted file backend (`init`
    first), trusting `upstream_ca_files` for upstream servers; `agent_toml`
    is the `[bridge]` section of a sandbox-agent config pointing at it."""

    def __init__(self, upstream_ca_files=()):
        self.dir = tempfile.TemporaryDirectory(prefix="airlock-py-bridge-")
        d = pathlib.Path(self.dir.name)
        (d / "egress").mkdir()
        os.chmod(d / "egress", 0o711)
        self.socket = d / "run" / "agent.sock"
        self.ca_cert = d / "data" / "egress-ca" / "ca.crt"
        cas = ", ".join(f'"{p}"' for p in upstream_ca_files)
        self.config = d / "vault-bridge.toml"
        self.config.write_text(
            f'[bridge]\ndata_dir = "{d / "data"}"\nsocket_path = "{self.socket}"\n'
            '[backend]\ntype = "file"\n[backend.file]\n'
            f'[egress]\nsocket_dir = "{d / "egress"}"\nupstream_ca_files = [{cas}]\n'
        )
        subprocess.run([binary("vault-bridge"), "--config", str(self.config), "init"], check=True,
                       capture_output=True, timeout=60)
        self.log_path = d / "vault-bridge.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary("vault-bridge"), "--config", str(self.config), "serve"],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"})
        deadline = time.monotonic() + 60
        while not (self.socket.is_socket() and self.ca_cert.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vault-bridge serve did not start; log:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.1)
        self.agent_toml = (f'[bridge]\nsocket_path = "{self.socket}"\negress_dir = "{d / "egress"}"\n'
                           f'ca_cert_file = "{self.ca_cert}"\n')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def free_port():
    """A loopback port free a moment ago for both TCP and UDP (the tunnel
    listens on both), picked below the kernel's ephemeral range (32768..)
    so the outgoing sockets opened by the hundred (agents' QUIC sockets, TCP
    connects) cannot take it before the process it is for binds it; and
    below the 20000.. range the Rust tests pick from (tests/src/deploy.rs)."""
    for _ in range(2000):
        port = random.randrange(12_000, 20_000)
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no loopback port in 12000..20000 free for both TCP and UDP")


def files_bytes(root):
    """Every regular file under `root`, concatenated."""
    out = bytearray()
    for p in pathlib.Path(root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                out += p.read_bytes()
            except OSError:
                pass
    return bytes(out)


@contextlib.contextmanager
def bridged_deployment(model, upstream_ca_file, name, wait, cp_toml="", agent_toml=""):
    """The whole customer-side path: the fake model binary `model`, a real
    `control-plane serve`, a real `vault-bridge serve` trusting
    `upstream_ca_file`, an environment named after `name`, and a real
    `sandbox-agent` enrolled into it beside the bridge, connected
    (`upstream_ca_file` may be a list of CA files; `cp_toml` /
    `agent_toml`: TOML appended to their configs). Yields a
    namespace (model, bridge, cp, client, environment, agent_id, agent,
    agent_log_path, agent_dir); stops all of it, and removes the agent's
    containers, at the end (also when setting up fails half-way)."""
    executor = os.environ.get("AIRLOCK_EXECUTOR_PATH")
    image = os.environ.get("AIRLOCK_SANDBOX_IMAGE")
    if not executor or not image:
        pytest.fail("AIRLOCK_EXECUTOR_PATH / AIRLOCK_SANDBOX_IMAGE unset: source scripts/setup.d/30-images.sh")
    d = type("Deployment", (), {})()
    with contextlib.ExitStack() as stack:
        d.model = Fixture(model, until="base_url")
        stack.callback(d.model.stop)
        cas = list(upstream_ca_file) if isinstance(upstream_ca_file, (list, tuple)) else [upstream_ca_file]
        d.bridge = VaultBridge(upstream_ca_files=cas)
        stack.callback(d.bridge.dir.cleanup)
        stack.callback(d.bridge.stop)
        tunnel, enroll = free_port(), free_port()
        while enroll == tunnel:
            enroll = free_port()
        d.cp = ControlPlane(d.model.facts["base_url"], extra_toml=cp_toml, tunnel_port=tunnel, enroll_port=enroll)
        stack.callback(d.cp.dir.cleanup)
        stack.callback(d.cp.stop)
        d.client = d.cp.client(timeout=wait)
        stack.callback(d.client.close)
        d.environment = d.client.beta.environments.create(name=f"{name}-{time.monotonic_ns()}")
        join = d.cp.cli("tokens", "create", "--environment", d.environment.id, "--json")["join_string"]
        d.agent_dir = tempfile.TemporaryDirectory(prefix="airlock-py-agent-")
        stack.callback(d.agent_dir.cleanup)
        a = pathlib.Path(d.agent_dir.name)
        config = a / "agent.toml"
        config.write_text(
            f'data_dir = "{a / "data"}"\n'
            f'[sandbox]\nexecutor_path = "{executor}"\ndefault_image = "{image}"\n'
            f'[policy]\nallowed_images = ["{image}"]\n' + d.bridge.agent_toml + agent_toml
        )
        out = subprocess.run([binary("sandbox-agent"), "--config", str(config), "enroll", "--join", join],
                             check=True, capture_output=True, timeout=60).stdout.decode()
        d.agent_id = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("agent_id="))
        stack.callback(_remove_agent_containers, d.agent_id)
        d.agent_log_path = a / "agent.log"
        agent_log = stack.enter_context(open(d.agent_log_path, "ab"))
        d.agent = subprocess.Popen([binary("sandbox-agent"), "--config", str(config), "run"],
                                   stdout=agent_log, stderr=agent_log, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "NO_COLOR": "1"})
        stack.callback(_stop_process, d.agent)
        deadline = time.monotonic() + 60
        while not d.cp.cli("agents", "list", "--json"):
            assert d.agent.poll() is None, f"the sandbox-agent exited:\n{d.agent_log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the sandbox-agent did not connect"
            time.sleep(0.2)
        yield d


def _stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _remove_agent_containers(agent_id):
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=airlock.agent_id={agent_id}"],
                         capture_output=True, timeout=60).stdout.decode().split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)
