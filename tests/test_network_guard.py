import socket

import pytest
from conftest import NetworkBlockedError


def test_non_loopback_connection_is_refused_before_any_packet() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkBlockedError, match=r"192\.0\.2\.1"):
            sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
        with pytest.raises(NetworkBlockedError):
            sock.connect_ex(("api.openai.com", 443))
    finally:
        sock.close()


def test_loopback_connection_is_allowed(loopback) -> None:
    with socket.create_connection(("127.0.0.1", loopback.port), timeout=2):
        pass
