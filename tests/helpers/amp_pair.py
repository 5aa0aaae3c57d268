"""In-memory AMP pairs for unit tests (the one place that imports Twisted's private iosim)."""

from __future__ import annotations

from typing import Any

from twisted.test import iosim


def connected_pair(server: Any, client: Any) -> iosim.IOPump:
    """Connect two protocol instances in memory; returns the pump to deliver bytes."""
    server_transport = iosim.FakeTransport(server, isServer=True)
    client_transport = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, server_transport, client, client_transport)
    return pump
