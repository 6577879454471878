"""Authentication and authorization: roles, users, password hashing, API tokens, sessions.

A pure core (no HTTP, no SQL): ``server.api.security`` adapts it to FastAPI and
``server.registry.auth_sql`` stores it in the registry database.
"""

from server.auth.errors import AuthError, ForbiddenError, ThrottledError, UnauthenticatedError
from server.auth.memory import InMemoryAuthStore
from server.auth.passwords import PasswordHasher
from server.auth.records import AuthStore, SessionRecord, TokenRecord, UserRecord
from server.auth.roles import Principal, Role, Via
from server.auth.service import TOKEN_PREFIX, AuthService, NewSession, NewToken, authorize
from server.auth.throttle import LoginThrottle

__all__ = [
    "TOKEN_PREFIX",
    "AuthError",
    "AuthService",
    "AuthStore",
    "ForbiddenError",
    "InMemoryAuthStore",
    "LoginThrottle",
    "NewSession",
    "NewToken",
    "PasswordHasher",
    "Principal",
    "Role",
    "SessionRecord",
    "ThrottledError",
    "TokenRecord",
    "UnauthenticatedError",
    "UserRecord",
    "Via",
    "authorize",
]
