"""The API's own exceptions, turned into JSON error responses by the app's handlers."""

from __future__ import annotations


class ApiNotFoundError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
