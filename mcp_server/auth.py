"""Optional bearer-token auth for the streamable HTTP transport (the SDK's AuthSettings + TokenVerifier).

With a token set, every request to /mcp must carry ``Authorization: Bearer <token>``; others get
HTTP 401 from the SDK's RequireAuthMiddleware. The comparison is constant-time. stdio ignores it
(the client that spawned the process is trusted).
"""

from __future__ import annotations

import hmac
from typing import Any

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings


class StaticTokenVerifier(TokenVerifier):
    """Accepts exactly one shared secret."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("empty token")
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token="***", client_id="bearer-token", scopes=[])
        return None


def auth_kwargs(token: str | None, host: str, port: int) -> dict[str, Any]:
    """MCPServer keyword arguments that turn bearer auth on (empty when ``token`` is None/empty)."""
    if not token:
        return {}
    base = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}"
    return {
        "auth": AuthSettings(issuer_url=base, resource_server_url=None, required_scopes=[]),
        "token_verifier": StaticTokenVerifier(token),
    }
