"""The exception tree of the shared contracts.

Callers on both sides catch ``FedforgeError`` subclasses and turn them into a quarantine
reason or a rejection reason; nothing here is allowed to escape as a bare ``ValueError``.
"""

from __future__ import annotations


class FedforgeError(Exception):
    """Root of every error raised by the shared package."""


class TopicError(FedforgeError):
    """A topic string does not match the fedforge v1 topic grammar."""


class PayloadError(FedforgeError):
    """A wire payload is malformed: broken JSON, wrong schema, wrong types."""


class BundleError(FedforgeError):
    """A model bundle failed a check; the message is the rejection reason."""


class SignatureError(BundleError):
    """The manifest signature is missing, malformed, or made by an untrusted key."""


class DatasetError(FedforgeError):
    """A data set cannot be fetched, verified or read."""


class ConfigError(FedforgeError):
    """A configuration file is missing or invalid."""
