"""The agent's MQTT v5 client: aiomqtt, plus the PUBACK reason codes that aiomqtt 2.x does not surface."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import PublishRefused


class CheckedClient(aiomqtt.Client):
    """An aiomqtt client whose QoS 1 publishes fail with :class:`PublishRefused` on a reason code >= 0x80.

    Under MQTT v5 a broker says "not authorized" (0x87) or "payload too large" (0x97) in the PUBACK;
    aiomqtt 2.x drops that reason code, so this subclass records it per message id and checks it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False,
                              timeout: float = 30.0) -> None:
        """Publish at QoS 1 and wait for the PUBACK; raise :class:`PublishRefused` on a failure code."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish on {topic}")
        fut: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = fut
        try:
            disconnected = self._disconnected
            done, _ = await asyncio.wait({fut, disconnected}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._acks.pop(info.mid, None)
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # mark it retrieved; aiomqtt reports the disconnection itself
        if fut not in done:
            if disconnected.done():
                raise aiomqtt.MqttError(f"connection lost before the broker acknowledged {topic}")
            raise aiomqtt.MqttError(f"no PUBACK for {topic} within {timeout:.0f} s")
        code = fut.result()
        if code.is_failure:
            raise PublishRefused(topic, code.value, code.getName())
