"""Real MCP servers for Airlock's MCP tests, written with the official `mcp`
Python SDK (2.x, pinned in scripts/setup.d/55-mcp.sh) and served over
Streamable HTTP by uvicorn on loopback (HTTPS when given a certificate).

    python3 tests/mcp/servers.py tickets   --port P [--tls-cert C --tls-key K] --state-dir D
    python3 tests/mcp/servers.py oauth     --port P [--tls-cert C --tls-key K] --state-dir D
                                           [--access-ttl S] [--refresh-delay S] [--public-url U]
    python3 tests/mcp/servers.py time      --port P [--tls-cert C --tls-key K] --state-dir D

Secrets come from the environment, never from the command line (a test's
canary check greps process listings):

    MCP_TEST_TOKEN          the static bearer token of `tickets` and `time`
    MCP_TEST_ADMIN_TOKEN    header `X-Admin-Token` of the oauth server's /admin/*
    MCP_TEST_SECRET_BASIC   client secret of the oauth client `client-basic`
    MCP_TEST_SECRET_POST    client secret of the oauth client `client-post`

Every server appends one JSON line per `tools/call` it receives (before the
tool runs, fsynced) to `<state-dir>/calls.jsonl`, and one line per HTTP
request to `<state-dir>/requests.jsonl` (method, path, JSON-RPC method,
status; never a header value). The fixture in tests/src/mcp.rs reads them.
No log line ever holds a token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import struct
import sys
import threading
import time
import zlib
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

NO_REBINDING_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


# --------------------------------------------------------------------------
# Logs the fixture reads
# --------------------------------------------------------------------------


class JsonLog:
    """An append-only JSON-lines file, one fsynced line per record."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        open(path, "a").close()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())


async def read_body(receive) -> tuple[bytes, Any]:
    """Read a whole ASGI request body; return it and a `receive` that replays it."""
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def replay_body(body: bytes):
    """An ASGI `receive` that yields `body` once."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def jsonrpc_messages(body: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a POST body (one or a batch); [] if not JSON."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list):
        return [m for m in parsed if isinstance(m, dict)]
    return []


class Recorder:
    """ASGI wrapper: logs every request and every `tools/call` before it runs."""

    def __init__(self, app, server: str, state_dir: str):
        self.app = app
        self.server = server
        self.calls = JsonLog(os.path.join(state_dir, "calls.jsonl"))
        self.requests = JsonLog(os.path.join(state_dir, "requests.jsonl"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        methods: list[str] = []
        if scope["method"] == "POST":
            body, receive = await read_body(receive)
            for m in jsonrpc_messages(body):
                methods.append(str(m.get("method", "")))
                if m.get("method") == "tools/call":
                    params = m.get("params") or {}
                    self.calls.append(
                        {
                            "server": self.server,
                            "path": scope["path"],
                            "rpc_id": m.get("id"),
                            "tool": params.get("name"),
                            "arguments": params.get("arguments"),
                            "meta": params.get("_meta"),
                            "at": time.time(),
                        }
                    )
        status = {"code": None}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                self.requests.append(
                    {
                        "server": self.server,
                        "method": scope["method"],
                        "path": scope["path"],
                        "rpc": methods,
                        "status": message["status"],
                        "authorized": has_bearer(scope),
                        "at": time.time(),
                    }
                )
            await send(message)

        await self.app(scope, receive, send_status)


def header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def has_bearer(scope) -> bool:
    value = header(scope, b"authorization") or ""
    return value.lower().startswith("bearer ")


class StaticBearer:
    """ASGI front: every request needs `Authorization: Bearer <token>` (401 otherwise)."""

    def __init__(self, app, token: str, realm: str):
        self.app = app
        self.token = token.encode()
        self.realm = realm

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        value = (header(scope, b"authorization") or "").encode("latin-1")
        expected = b"Bearer " + self.token
        if not secrets.compare_digest(value, expected):
            error = "invalid_token" if value else "invalid_request"
            body = json.dumps({"error": error, "error_description": "a valid bearer token is required"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", f'Bearer realm="{self.realm}", error="{error}"'.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class Misbehaving:
    """ASGI router in front of a server: paths that answer like a broken server.

    POST /garbage/mcp       200, Content-Type application/json, a body that is not JSON
    POST /html/mcp          200, Content-Type text/html, a web page
    POST /notrpc/mcp        200, Content-Type application/json, JSON that is not JSON-RPC
    POST /status/<code>/mcp that HTTP status (500, 502, 503...), a short text body
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        answer: tuple[int, bytes, bytes] | None = None
        if path == "/garbage/mcp":
            answer = (200, b"application/json", b"\x00<<this is not json-rpc>>\xff garbage {{{")
        elif path == "/html/mcp":
            answer = (200, b"text/html", b"<html><body>Login page</body></html>")
        elif path == "/notrpc/mcp":
            answer = (200, b"application/json", b'{"hello": "world", "result": 42}')
        elif path.startswith("/status/") and path.endswith("/mcp"):
            code = path.split("/")[2]
            if code.isdigit() and 200 <= int(code) <= 599:
                answer = (int(code), b"text/plain", f"status {code}".encode())
        if answer is None:
            return await self.app(scope, receive, send)
        # Drain the request first, as a real server would.
        _, _ = await read_body(receive)
        status, ctype, body = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------
# tickets: static bearer token
# --------------------------------------------------------------------------


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid RGB PNG of a red-to-blue gradient (no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b""
    for y in range(height):
        rows += b"\x00"
        for x in range(width):
            rows += bytes([255 * x // max(width - 1, 1), 40, 255 * y // max(height - 1, 1)])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def tickets_server() -> MCPServer:
    server = MCPServer("tickets", version="1.0.0", instructions="A ticketing system for Airlock's tests.")

    @server.tool(structured_output=False, description="Search tickets. Answers with the query and arguments it was given.")
    def search(query: str, limit: int = 10) -> str:
        return json.dumps({"tool": "search", "query": query, "limit": limit, "results": [f"TICKET-{n}" for n in range(1, min(limit, 3) + 1)]})

    @server.tool(structured_output=False, description="A screenshot of a ticket (a small PNG image).")
    def screenshot(ticket: str = "TICKET-1") -> Image:
        return Image(data=tiny_png(), format="png")

    @server.tool(structured_output=False, description="Sleep `seconds` seconds, then answer.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds} s"

    @server.tool(structured_output=False, description="A text result of about `megabytes` MB (default 50).")
    def huge(megabytes: float = 50) -> str:
        n = int(megabytes * 1024 * 1024)
        line = "0123456789abcdefghijklmnopqrstuvwxyz-HUGE-RESULT-LINE-0123456789abcdefghijklmnopqrstuvwxy\n"
        return (line * (n // len(line) + 1))[:n]

    def extra() -> str:
        return "extra ran"

    @server.tool(
        structured_output=False,
        description="Adds the tool `extra` to this server and sends notifications/tools/list_changed.",
    )
    async def grow(ctx: Context) -> str:
        if "extra" not in [t.name for t in await server.list_tools()]:
            server.add_tool(extra, name="extra", description="Appeared after grow.", structured_output=False)
        # The classic notification, on this request's response stream (what
        # MCP clients such as rmcp listen to).
        await ctx.session.send_tool_list_changed()
        return "grown"

    @server.tool(structured_output=False, description="Always fails on the server (isError: true).")
    def fail(message: str = "ticket backend unavailable") -> str:
        raise ToolError(message)

    return server


# --------------------------------------------------------------------------
# oauth: an OAuth 2.1 authorization server (the SDK's) + MCP server oauth-notes
# --------------------------------------------------------------------------


class TestProvider:
    """The SDK's `OAuthAuthorizationServerProvider`, in memory.

    Three pre-registered clients, one per token endpoint client
    authentication method: `client-none` (none, public), `client-basic`
    (client_secret_basic), `client-post` (client_secret_post). Refresh
    tokens rotate: each is good for one refresh. Access tokens live
    `access_ttl` seconds.
    """

    def __init__(self, access_ttl: float, refresh_delay: float, scopes: list[str]):
        self.access_ttl = access_ttl
        self.refresh_delay = refresh_delay
        self.scopes = scopes
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.expires_at_exact: dict[str, float] = {}
        for cid, method, secret in [
            ("client-none", "none", None),
            ("client-basic", "client_secret_basic", os.environ.get("MCP_TEST_SECRET_BASIC")),
            ("client-post", "client_secret_post", os.environ.get("MCP_TEST_SECRET_POST")),
        ]:
            if method != "none" and not secret:
                continue
            self.clients[cid] = OAuthClientInformationFull(
                client_id=cid,
                client_secret=secret,
                token_endpoint_auth_method=method,
                grant_types=["authorization_code", "refresh_token"],
                redirect_uris=["http://127.0.0.1/callback"],
                scope=" ".join(scopes),
            )

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        # The resource owner always consents (there is no browser in the tests).
        code = "code_" + secrets.token_urlsafe(24)
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or self.scopes,
            expires_at=time.time() + 300,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject="test-user",
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(self, client, authorization_code: str):
        return self.codes.get(authorization_code)

    async def exchange_authorization_code(self, client, authorization_code: AuthorizationCode) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)
        return self.issue(client.client_id, authorization_code.scopes, authorization_code.resource)

    def issue(self, client_id: str, scopes: list[str], resource: str | None) -> OAuthToken:
        access = "at_" + secrets.token_urlsafe(32)
        refresh = "rt_" + secrets.token_urlsafe(32)
        expires = time.time() + self.access_ttl
        self.access[access] = AccessToken(
            token=access, client_id=client_id, scopes=scopes, expires_at=int(expires) + 1, resource=resource, subject="test-user"
        )
        self.expires_at_exact[access] = expires
        self.refresh[refresh] = RefreshToken(token=refresh, client_id=client_id, scopes=scopes, resource=resource, subject="test-user")
        return OAuthToken(
            access_token=access,
            expires_in=max(int(self.access_ttl), 1),
            scope=" ".join(scopes),
            refresh_token=refresh,
        )

    async def load_refresh_token(self, client, refresh_token: str) -> RefreshToken | None:
        return self.refresh.get(refresh_token)

    async def exchange_refresh_token(self, client, refresh_token: RefreshToken, scopes: list[str]) -> OAuthToken:
        if self.refresh_delay > 0:
            await asyncio.sleep(self.refresh_delay)
        # Rotation: a refresh token is good once (a second concurrent refresh
        # with the same token fails with invalid_grant).
        if self.refresh.pop(refresh_token.token, None) is None:
            raise TokenError("invalid_grant", "refresh token already used")
        return self.issue(client.client_id, scopes, refresh_token.resource)

    async def load_access_token(self, token: str) -> AccessToken | None:
        at = self.access.get(token)
        if at is None:
            return None
        if self.expires_at_exact.get(token, 0) < time.time():
            return None
        return at

    async def revoke_token(self, token) -> None:
        self.access.pop(token.token, None)
        self.refresh.pop(token.token, None)


class TokenStats:
    """ASGI wrapper in front of POST /token: counts requests by grant type.

    Counts before the SDK's handler runs (so failed and concurrent refreshes
    count too) and records, per refresh, the client authentication method
    the request used and its scope/resource; never a secret or token.
    """

    def __init__(self, app):
        self.app = app
        self.refresh_requests = 0
        self.refresh_succeeded = 0
        self.refresh_failed = 0
        self.other_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.refreshes: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/token" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body, receive = await read_body(receive)
        form = {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
        if form.get("grant_type") != "refresh_token":
            self.other_requests += 1
            return await self.app(scope, receive, send)
        self.refresh_requests += 1
        auth = header(scope, b"authorization") or ""
        if auth.lower().startswith("basic ") and "client_id" not in form:
            # RFC 6749 §2.3.1: with HTTP Basic the client_id travels in the
            # header only; the SDK's token handler also wants it in the form,
            # so copy it there (as authorization servers in the field accept).
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                user = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
                from urllib.parse import quote, unquote

                form["client_id"] = unquote(user)
                body = body + (b"&" if body else b"") + b"client_id=" + quote(unquote(user)).encode()
                receive = replay_body(body)
        record: dict[str, Any] = {
            "client_id": form.get("client_id"),
            "auth": "client_secret_basic" if auth.lower().startswith("basic ") else ("client_secret_post" if "client_secret" in form else "none"),
            "scope": form.get("scope"),
            "resource": form.get("resource"),
            "at": time.time(),
        }
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        status = {"code": 0}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.in_flight -= 1
            record["status"] = status["code"]
            if status["code"] == 200:
                self.refresh_succeeded += 1
            else:
                self.refresh_failed += 1
            self.refreshes.append(record)

    def snapshot(self) -> dict[str, Any]:
        return {
            "refresh_requests": self.refresh_requests,
            "refresh_succeeded": self.refresh_succeeded,
            "refresh_failed": self.refresh_failed,
            "other_token_requests": self.other_requests,
            "max_concurrent_refreshes": self.max_in_flight,
            "refreshes": self.refreshes,
        }


def oauth_app(public_url: str, access_ttl: float, refresh_delay: float):
    scopes = ["notes.read", "notes.write"]
    provider = TestProvider(access_ttl, refresh_delay, scopes)
    server = MCPServer(
        "oauth-notes",
        version="1.0.0",
        auth_server_provider=provider,
        auth=AuthSettings(
            issuer_url=public_url,
            resource_server_url=public_url + "/mcp",
            validate_token_resource=False,
            required_scopes=["notes.read"],
        ),
    )
    notes: list[str] = []

    @server.tool(structured_output=False, description="Add a note.")
    def add_note(text: str) -> str:
        notes.append(text)
        return f"note {len(notes)} added"

    @server.tool(structured_output=False, description="List the notes.")
    def list_notes() -> str:
        return json.dumps(notes)

    @server.tool(structured_output=False, description="Who the access token belongs to (client id and scopes; never the token).")
    def whoami() -> str:
        return json.dumps({"server": "oauth-notes"})

    stats_holder: dict[str, TokenStats] = {}
    admin_token = os.environ.get("MCP_TEST_ADMIN_TOKEN", "")

    def admin_ok(request: Request) -> bool:
        given = request.headers.get("x-admin-token", "")
        return bool(admin_token) and secrets.compare_digest(given.encode(), admin_token.encode())

    @server.custom_route("/stats", methods=["GET"])
    async def stats(request: Request) -> Response:
        s = stats_holder["stats"].snapshot()
        s["access_ttl"] = provider.access_ttl
        s["refresh_delay"] = provider.refresh_delay
        s["live_refresh_tokens"] = len(provider.refresh)
        return JSONResponse(s)

    @server.custom_route("/admin/grant", methods=["POST"])
    async def grant(request: Request) -> Response:
        """A completed consent: an access + refresh token pair for a client."""
        if not admin_ok(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        body = await request.json()
        cid = body.get("client_id", "client-none")
        if cid not in provider.clients:
            return JSONResponse({"error": f"unknown client {cid!r}"}, status_code=400)
        scope = body.get("scope") or " ".join(scopes)
        tok = provider.issue(cid, scope.split(" "), body.get("resource"))
        return JSONResponse(json.loads(tok.model_dump_json(exclude_none=True)))

    @server.custom_route("/admin/expire", methods=["POST"])
    async def expire(request: Request) -> Response:
        """Expire every access token now (the next MCP request gets a 401)."""
        if not admin_ok(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        for k in provider.expires_at_exact:
            provider.expires_at_exact[k] = 0
        return JSONResponse({"expired": len(provider.expires_at_exact)})

    @server.custom_route("/admin/revoke_refresh", methods=["POST"])
    async def revoke_refresh(request: Request) -> Response:
        """Forget every refresh token (the next refresh fails with invalid_grant)."""
        if not admin_ok(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        n = len(provider.refresh)
        provider.refresh.clear()
        return JSONResponse({"revoked": n})

    @server.custom_route("/admin/config", methods=["POST"])
    async def config(request: Request) -> Response:
        """Change `access_ttl` and/or `refresh_delay` (seconds) for tokens issued from now on."""
        if not admin_ok(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        body = await request.json()
        if "access_ttl" in body:
            provider.access_ttl = float(body["access_ttl"])
        if "refresh_delay" in body:
            provider.refresh_delay = float(body["refresh_delay"])
        return JSONResponse({"access_ttl": provider.access_ttl, "refresh_delay": provider.refresh_delay})

    app = server.streamable_http_app(transport_security=NO_REBINDING_CHECK)
    wrapped = TokenStats(app)
    stats_holder["stats"] = wrapped
    return wrapped


# --------------------------------------------------------------------------
# time: the reference server mcp-server-time (PyPI) behind a bearer front
# --------------------------------------------------------------------------


def time_app(token: str):
    # mcp-server-time's own server object (its stdio `serve` runs the same
    # one); here served over Streamable HTTP with the static-bearer front.
    from mcp_server_time.server import create_server

    server = create_server("UTC")
    return StaticBearer(server.streamable_http_app(transport_security=NO_REBINDING_CHECK), token, "time")


# --------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["tickets", "oauth", "time"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--access-ttl", type=float, default=3.0)
    p.add_argument("--refresh-delay", type=float, default=0.0)
    p.add_argument("--public-url", help="base URL clients use (default: scheme://127.0.0.1:port)")
    a = p.parse_args()
    os.makedirs(a.state_dir, exist_ok=True)
    scheme = "https" if a.tls_cert else "http"
    public_url = (a.public_url or f"{scheme}://127.0.0.1:{a.port}").rstrip("/")

    if a.kind == "tickets":
        token = os.environ.get("MCP_TEST_TOKEN")
        if not token:
            sys.exit("tickets: MCP_TEST_TOKEN is not set")
        app = tickets_server().streamable_http_app(transport_security=NO_REBINDING_CHECK)
        app = Misbehaving(StaticBearer(app, token, "tickets"))
    elif a.kind == "oauth":
        app = oauth_app(public_url, a.access_ttl, a.refresh_delay)
    else:
        token = os.environ.get("MCP_TEST_TOKEN")
        if not token:
            sys.exit("time: MCP_TEST_TOKEN is not set")
        app = time_app(token)
    app = Recorder(app, a.kind, a.state_dir)

    config = uvicorn.Config(
        app,
        host=a.host,
        port=a.port,
        ssl_certfile=a.tls_cert,
        ssl_keyfile=a.tls_key,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
