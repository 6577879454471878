"""Where the broker is and how to reach it: its URL, the TLS files checked at start, the will."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlparse

from shared.errors import ConfigError, FedforgeError


class MqttError(FedforgeError):
    """The broker cannot be reached or refused an operation."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"unsupported broker URL scheme {parsed.scheme!r} in {url!r}")
        tls = parsed.scheme in ("mqtts", "ssl")
        if not parsed.hostname:
            raise ConfigError(f"broker URL {url!r} has no host")
        return cls(parsed.hostname, parsed.port or (8883 if tls else 1883), tls)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class TlsKwargs(TypedDict, total=False):
    """The TLS keyword arguments of ``MqttClient``, as built from settings by ``tls_kwargs``."""

    ca_certs: str | None
    certfile: str | None
    keyfile: str | None


def tls_kwargs(broker_url: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> TlsKwargs:
    """Check the TLS files of one process against its broker URL; ``ConfigError`` says what is wrong.

    The files are loaded here, at start, so a missing, unreadable or mismatched file is a
    configuration error with the setting's name in it, not an ``ssl`` traceback from paho's
    ``tls_set`` (or a connect that just keeps failing). Files with a plain ``mqtt://`` URL
    are refused too: an operator who configured certificates expects them to be used.
    """
    tls = BrokerAddress.parse(broker_url).tls
    if (cert_file is None) != (key_file is None):
        raise ConfigError("mqtt_cert_file and mqtt_key_file must be set together (the client certificate and its key)")
    if not tls:
        if ca_file is not None or cert_file is not None:
            raise ConfigError(
                f"mqtt_ca_file/mqtt_cert_file/mqtt_key_file need an mqtts:// broker_url, not {broker_url!r}"
            )
        return TlsKwargs()
    if ca_file is None:
        raise ConfigError(f"broker_url {broker_url!r} uses TLS: set mqtt_ca_file to the CA that signed the broker")
    for name, path in (("mqtt_ca_file", ca_file), ("mqtt_cert_file", cert_file), ("mqtt_key_file", key_file)):
        if path is not None:
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{name} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS files are not a usable CA / certificate / key: {exc}") from None
    return TlsKwargs(
        ca_certs=str(ca_file),
        certfile=None if cert_file is None else str(cert_file),
        keyfile=None if key_file is None else str(key_file),
    )


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
