"""The agent's MQTT v5 client: aiomqtt, plus the PUBACK reason codes that aiomqtt 2.x does not surface."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import PublishRefused, PublishTooLarge


class CheckedClient(aiomqtt.Client):
    """An aiomqtt client whose QoS 1 publishes fail with :class:`PublishRefused` on a reason code >= 0x80.

    Under MQTT v5 a broker says "not authorized" (0x87) or "payload too large" (0x97) in the PUBACK;
    aiomqtt 2.x drops that reason code, so this subclass records it per message id and checks it.
    It also keeps the maximum packet size the broker announced in its CONNACK and refuses, without
    sending it, a message that would exceed it (a broker disconnects a client that sends one).
    Messages on a topic of ``direct`` go to its handler (with the payload) as they arrive, on the event loop,
    instead of the message queue: no task and no wait per message (for the hub's frequent acks).
    """

    def __init__(self, *args: Any, connect_timeout: float = 15.0,
                 direct: Mapping[str, Callable[[bytes], None]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct = dict(direct or {})
        self._writing = False
        self._writer = False
        """Whether a writer may be registered on the loop for the socket (see ``_on_socket_register_write``)."""
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._callbacks: dict[int, Callable[[ReasonCode], None]] = {}
        self._connect_timeout = connect_timeout
        self.max_packet_size: int | None = None
        """The broker's Maximum Packet Size from its CONNACK (MQTT v5); None when it announced none."""
        quick_pubacks(self._client)

    async def __aenter__(self) -> CheckedClient:
        """Connect, giving up after ``connect_timeout``.

        Works around two gaps of aiomqtt 2.x: it waits for the CONNACK without a limit (a connection that
        drops before the CONNACK waits forever), and a connection that drops right after the CONNACK is
        forgotten when ``__aenter__`` resets its disconnection state (nothing would ever notice).
        """
        try:
            async with asyncio.timeout(self._connect_timeout):
                await super().__aenter__()
        except TimeoutError as err:
            self._abandon()
            raise aiomqtt.MqttError(f"no CONNACK from the broker within {self._connect_timeout:.0f} s") from err
        if self._client.socket() is None or not self._client.is_connected():
            self._abandon()
            raise aiomqtt.MqttError("the broker closed the connection right after accepting it")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Disconnect; give up waiting after a few seconds (aiomqtt waits without a limit)."""
        try:
            async with asyncio.timeout(5.0):
                await super().__aexit__(*exc_info)
        except TimeoutError:
            self._abandon()

    def _abandon(self) -> None:
        self._client.disconnect()
        if not self._disconnected.done():
            self._disconnected.set_result(None)
        if self._misc_task is not None:
            self._misc_task.cancel()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None = None) -> None:
        limit = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        self.max_packet_size = limit if isinstance(limit, int) and limit > 0 else None
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """Write a packet paho queues on the event loop's thread at once, without a wake-up through the loop's
        self-pipe and a writer registration; what the socket does not take is left to a registered writer."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if not on_loop or self._writing:
            self._writer = True
            super()._on_socket_register_write(client, userdata, sock)
            return
        self._writing = True
        try:
            written = self._write(client)
        finally:
            self._writing = False
        if written and client.want_write():  # the socket is full: paho registered nothing, being inside this call
            self._writer = True
            self._loop.add_writer(sock.fileno(), partial(self._write, client))

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """Remove the loop's writer if one was added (paho asks after every write, most of them made at once)."""
        if self._writer:
            self._writer = False
            super()._on_socket_unregister_write(client, userdata, sock)

    def _write(self, client: paho.Client) -> bool:
        """Write what paho holds; False when the socket broke, which ends the connection as aiomqtt's writer does."""
        try:
            client.loop_write()
        except OSError as err:
            if not self._disconnected.done():
                self._disconnected.set_exception(err)
            return False
        return True

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        handler = self._direct.get(message.topic)
        if handler is None:
            super()._on_message(client, userdata, message)
        else:
            handler(bytes(message.payload))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)
        done = self._callbacks.pop(mid, None)
        if done is not None:
            done(reason_code)
        if mid in self._pending_publishes:  # aiomqtt's own publish (this class publishes without it)
            super()._on_publish(client, userdata, mid, reason_code, properties)

    def _publish_qos1(self, topic: str, payload: bytes, retain: bool) -> int:
        if self.max_packet_size is not None and (size := publish_packet_size(topic, payload)) > self.max_packet_size:
            raise PublishTooLarge(topic, size, self.max_packet_size)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish on {topic}")
        return int(info.mid)

    def publish_nowait(self, topic: str, payload: bytes, done: Callable[[ReasonCode], None]) -> None:
        """Publish at QoS 1 without waiting: ``done(reason_code)`` runs on the event loop when the PUBACK comes
        (never, if the connection is lost first). Raises :class:`PublishTooLarge` (nothing sent) as
        :meth:`publish_checked` does; costs no task and no future per message."""
        self._callbacks[self._publish_qos1(topic, payload, retain=False)] = done

    async def subscribe_checked(self, topics: list[tuple[str, int]]) -> None:
        """Subscribe, giving up as soon as the connection drops: aiomqtt waits for the SUBACK until its timeout even
        when the broker has already closed the connection (a session taken over right after its CONNACK)."""
        subscribing = asyncio.ensure_future(self.subscribe(topics))
        disconnected: asyncio.Future[Any] = self._disconnected
        await asyncio.wait({subscribing, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # mark it retrieved; aiomqtt reports the disconnection itself
        if not subscribing.done():
            subscribing.cancel()
            raise aiomqtt.MqttError("connection lost before the broker acknowledged the subscriptions")
        subscribing.result()

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False,
                              timeout: float = 30.0) -> None:
        """Publish at QoS 1 and wait for the PUBACK; raise :class:`PublishRefused` on a failure code and
        :class:`PublishTooLarge` (nothing sent) for a message over the broker's maximum packet size."""
        mid = self._publish_qos1(topic, payload, retain)
        fut: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._acks[mid] = fut
        try:
            disconnected: asyncio.Future[Any] = self._disconnected
            done, _ = await asyncio.wait({fut, disconnected}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._acks.pop(mid, None)
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # mark it retrieved; aiomqtt reports the disconnection itself
        if fut not in done:
            if disconnected.done():
                raise aiomqtt.MqttError(f"connection lost before the broker acknowledged {topic}")
            raise aiomqtt.MqttError(f"no PUBACK for {topic} within {timeout:.0f} s")
        code = fut.result()
        if code.is_failure:
            raise PublishRefused(topic, code.value, code.getName())


def publish_packet_size(topic: str, payload: bytes) -> int:
    """The size in bytes of an MQTT v5 QoS 1 PUBLISH packet without properties, as the broker counts it."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + len(payload)  # topic, packet id, empty properties, payload
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK, "Success")
"""The reason code of every PUBACK that has none (a success without properties), shared: treat it as read-only."""
PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
"""The (empty) properties of such a PUBACK, shared: treat them as read-only."""


def quick_pubacks(client: paho.Client) -> None:
    """Have ``client`` settle a PUBACK of two bytes (its packet id alone: a success without properties, what a
    broker sends for nearly every message) without decoding it.

    paho decodes every PUBACK into a new ``ReasonCode`` and a new ``Properties``, whose ``__init__`` builds the
    tables of all 27 MQTT v5 property names: about 100 of the 240 µs of CPU the agent spent on each PUBACK at 10
    messages a second. Such a PUBACK is given :data:`PUBACK_SUCCESS` and :data:`PUBACK_NO_PROPERTIES`; any other
    (a reason code, properties, a PUBCOMP) goes through paho's own decoding. Uses paho's private ``_handle_pubackcomp``,
    ``_in_packet``, ``_out_messages`` and ``_do_on_publish`` (paho 2.x); ``tests/test_agent_mqtt.py`` checks that the
    callbacks get what paho's decoding gives."""
    decode = client._handle_pubackcomp

    def handle(cmd: str) -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return decode(cmd)  # type: ignore[arg-type]
        mid = packet[0] << 8 | packet[1]
        with client._out_message_mutex:
            if mid in client._out_messages:
                return client._do_on_publish(mid, PUBACK_SUCCESS, PUBACK_NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubackcomp = handle  # type: ignore[method-assign]
