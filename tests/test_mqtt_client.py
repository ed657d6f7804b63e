"""The agent's MQTT client notices a connection that drops while it waits for the broker's SUBACK."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aiomqtt
import pytest

from edge.agents.mqtt import CheckedClient

CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])  # session not present, success, no properties


def _broker_that_drops_on_subscribe(listener: socket.socket, subscribed: threading.Event) -> None:
    """Accept one client, answer its CONNECT, and close the connection when its SUBSCRIBE arrives (as a broker
    does when another client takes the session over at that moment)."""
    conn, _ = listener.accept()
    with conn:
        conn.recv(4096)  # CONNECT
        conn.sendall(CONNACK_V5)
        while True:
            data = conn.recv(4096)
            if not data or data[0] >> 4 == 8:  # SUBSCRIBE
                break
        subscribed.set()


def test_a_connection_lost_while_subscribing_ends_the_wait_at_once() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    subscribed = threading.Event()
    server = threading.Thread(target=_broker_that_drops_on_subscribe, args=(listener, subscribed), daemon=True)
    server.start()

    async def session() -> float:
        client = CheckedClient(hostname="127.0.0.1", port=port, identifier="kk-aq-0001",
                               protocol=aiomqtt.ProtocolVersion.V5, timeout=30, connect_timeout=10)
        async with client:
            started = time.monotonic()
            with pytest.raises(aiomqtt.MqttError):
                await client.subscribe_checked([("nakhon/kk-aq-0001/down/cmd", 1)])
            return time.monotonic() - started

    try:
        waited = asyncio.run(asyncio.wait_for(session(), 60))
    finally:
        listener.close()
        server.join(10)
    assert subscribed.is_set()
    assert waited < 10, f"waited {waited:.1f} s for a SUBACK on a closed connection (aiomqtt's timeout is 30 s)"
