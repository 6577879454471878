"""Errors of the auth core; the API maps them to 401/403/429 JSON, never to a 500."""

from __future__ import annotations

from server.errors import ServerError


class AuthError(ServerError):
    """A user, token or session operation was refused (bad name, duplicate, unknown id)."""


class UnauthenticatedError(AuthError):
    """No credential, or one that is wrong, expired, revoked or of a disabled user (HTTP 401)."""


class ForbiddenError(AuthError):
    """A valid principal whose role is too weak, or a cookie request without its CSRF token (HTTP 403)."""


class ThrottledError(AuthError):
    """Too many failed logins for one user name or client in the window (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownIdentityError(AuthError):
    """No such user or API token (HTTP 404 for an admin; a login never says so)."""
