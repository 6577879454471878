"""``fedforge users ...`` and ``fedforge tokens ...``: identities in the server's registry database.

The first admin is created here (no HTTP endpoint is open for it). Output is one JSON
object per line; a token is printed once, on creation, and cannot be shown again.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from typing import Any

from server.api.auth_routes import token_view, user_view
from server.auth.errors import AuthError
from server.auth.roles import Role
from server.auth.service import AuthService
from server.config import ServerSettings

log = logging.getLogger(__name__)

EXIT_USAGE = 2


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def _read_password(from_stdin: bool) -> str | None:
    """From stdin (one line) or an interactive prompt twice; None when neither is possible."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        log.error("no terminal to prompt for a password: use --password-stdin")
        return None
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        log.error("the passwords differ")
        return None
    return first


def run_auth_command(settings: ServerSettings, name: str, args: argparse.Namespace) -> int:
    from server.registry.auth_sql import SqlAuthStore
    from server.registry.migrate import migrate
    from server.registry.sql import SqlRegistry

    migrate(settings.database_url)
    registry = SqlRegistry(settings.database_url)
    store = SqlAuthStore(registry.engine)
    service = AuthService(store, audit=registry)
    try:
        return _users(service, args) if name == "users" else _tokens(service, args)
    except AuthError as exc:
        log.error("%s", exc)
        return 1
    finally:
        registry.close()


def _users(service: AuthService, args: argparse.Namespace) -> int:
    if args.action == "list":
        for user in service.store.list_users():
            _emit(user_view(user))
        return 0
    if not args.username:
        log.error("fedforge users %s needs a user name", args.action)
        return EXIT_USAGE
    if args.action == "create":
        password = None if args.no_password else _read_password(args.password_stdin)
        if password is None and not args.no_password:
            return EXIT_USAGE
        user = service.create_user(args.username, Role(args.role or "viewer"), password)
        _emit(user_view(user))
    elif args.action in ("disable", "enable"):
        _emit(user_view(service.set_disabled(args.username, args.action == "disable")))
    elif args.action == "set-password":
        password = _read_password(args.password_stdin)
        if password is None:
            return EXIT_USAGE
        service.set_password(args.username, password)
        _emit({"username": args.username, "password_set": True})
    elif args.action == "set-role":
        if args.role is None:
            log.error("fedforge users set-role needs --role")
            return EXIT_USAGE
        _emit(user_view(service.set_role(args.username, Role(args.role))))
    return 0


def _tokens(service: AuthService, args: argparse.Namespace) -> int:
    if args.action == "list":
        for token in service.store.list_tokens(args.user):
            _emit(token_view(token))
        return 0
    if args.action == "create":
        if not args.user:
            log.error("fedforge tokens create needs --user")
            return EXIT_USAGE
        new = service.create_token(args.user, args.name)
        _emit({**token_view(new.record), "token": new.token})
        return 0
    if not args.token_id:
        log.error("fedforge tokens revoke needs the token id")
        return EXIT_USAGE
    _emit(token_view(service.revoke_token(args.token_id)))
    return 0
