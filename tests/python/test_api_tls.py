"""The official `anthropic` SDK against the public API over HTTPS
(`[api.tls]`, docs/tls.md), with a certificate from a private CA made here
with the `openssl` CLI: the CA given to the SDK as an SSL context, and
through `SSL_CERT_FILE`; without it the SDK refuses the certificate.
"""

import http.client
import os
import pathlib
import ssl
import subprocess
import tempfile
import time

import anthropic
import pytest

from conftest import ControlPlane, user_message


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki():
    """A CA and a server certificate for localhost and 127.0.0.1 (key mode 0600)."""
    d = tempfile.TemporaryDirectory(prefix="airlock-py-tls-")
    p = pathlib.Path(d.name)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Airlock pytest CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=p)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=localhost", cwd=p)
    (p / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    openssl("x509", "-req", "-in", "api.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "api.crt", "-days", "2", "-extfile", "ext.cnf", cwd=p)
    os.chmod(p / "api.key", 0o600)
    yield p
    d.cleanup()


@pytest.fixture(scope="module")
def tls_control_plane(fake_model, pki):
    cp = ControlPlane(
        fake_model.base_url,
        extra_toml=f'[api.tls]\ncert_file = "{pki / "api.crt"}"\nkey_file = "{pki / "api.key"}"\n',
    )
    # conftest reads api_addr from stdout; the API speaks HTTPS there.
    cp.base_url = cp.base_url.replace("http://127.0.0.1", "https://localhost")
    yield cp
    code = cp.stop()
    log = cp.log_path.read_text()
    cp.dir.cleanup()
    assert code == 0, f"control-plane did not shut down gracefully (exit {code}):\n{log[-4000:]}"


def exercise(client):
    """Create, send and stream over HTTPS; returns the streamed event types."""
    agent = client.beta.agents.create(name="tls", model="claude-sonnet-4-5", system="Be brief.")
    env = client.beta.environments.create(name=f"tls-{time.monotonic_ns()}", config={"type": "self_hosted"})
    session = client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    seen = []
    with client.beta.sessions.events.stream(session.id, extra_query={"after": 0}) as stream:
        sent = client.beta.sessions.events.send(session.id, events=[user_message("over https")])
        for ev in stream:
            seen.append(ev.type)
            if ev.id == sent.data[0].id:
                break
    assert client.beta.sessions.retrieve(session.id).id == session.id
    return seen


def test_sdk_with_an_ssl_context(tls_control_plane, pki):
    assert tls_control_plane.base_url.startswith("https://localhost:")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with tls_control_plane.client(http_client=anthropic.DefaultHttpxClient(verify=ctx)) as client:
        assert "user.message" in exercise(client)


def test_sdk_with_ssl_cert_file(tls_control_plane, pki, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    with tls_control_plane.client() as client:
        assert "user.message" in exercise(client)


def test_sdk_refuses_an_unknown_ca(tls_control_plane, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with tls_control_plane.client() as client:
        with pytest.raises(anthropic.APIConnectionError) as err:
            client.beta.agents.list()
    cause = err.value.__cause__
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(err.value)


def test_plain_http_on_the_https_port_gets_no_answer(tls_control_plane):
    port = int(tls_control_plane.base_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/v1/agents", headers={"x-api-key": tls_control_plane.key})
        conn.getresponse()
    conn.close()
