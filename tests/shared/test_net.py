from __future__ import annotations

import socket

from shared.net import free_port, wait_port


def test_free_port_can_be_bound_and_wait_port_sees_the_listener() -> None:
    port = free_port()
    assert not wait_port(port, timeout=0.3)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert wait_port(port, timeout=2.0)
