"""The fence around paho's private parts: every name it uses exists in the installed
paho-mqtt and aiomqtt as the receive path expects, and no other module reaches for them.

When paho-mqtt is upgraded, this test names each private symbol that changed.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import paho.mqtt
from paho.mqtt.client import CallbackAPIVersion, MQTTMessage
from paho.mqtt.client import Client as PahoClient

from cloud import paho_internals as fence
from floodgate.broker import BrokerSettings
from floodgate.mqtt import client as make_client

REPO = Path(__file__).resolve().parents[2]
PAHO = f"paho-mqtt {paho.mqtt.__version__}"


def test_every_paho_method_the_receive_path_uses_is_there_with_its_parameters() -> None:
    wrong = []
    for name, params in fence.PAHO_METHODS.items():
        method = getattr(PahoClient, name, None)
        if not callable(method):
            wrong.append(f"{PAHO}: Client.{name} is gone")
            continue
        got = tuple(inspect.signature(method).parameters)
        if got != params:
            wrong.append(f"{PAHO}: Client.{name}{got} is not Client.{name}{params}")
    assert not wrong, "cloud/paho_internals.py needs a look:\n" + "\n".join(wrong)


async def test_every_attribute_it_reads_is_on_a_client_and_a_message() -> None:
    paho = PahoClient(CallbackAPIVersion.VERSION2)
    wrong = [f"{PAHO}: a Client has no {a}" for a in fence.PAHO_ATTRIBUTES if not hasattr(paho, a)]
    packet = getattr(paho, "_in_packet", {})
    wrong += [
        f"{PAHO}: Client._in_packet has no key {k!r}" for k in fence.PAHO_IN_PACKET_KEYS if k not in packet
    ]
    message = MQTTMessage(mid=1, topic=b"t")
    wrong += [
        f"{PAHO}: an MQTTMessage has no {a}" for a in fence.MESSAGE_ATTRIBUTES if not hasattr(message, a)
    ]
    client = make_client(
        BrokerSettings(url="mqtt://127.0.0.1:1"), identifier="x", will_topic="t", will_payload=b""
    )
    wrong += [f"aiomqtt: a Client has no {a}" for a in fence.AIOMQTT_ATTRIBUTES if not hasattr(client, a)]
    assert not wrong, "cloud/paho_internals.py needs a look:\n" + "\n".join(wrong)
    assert isinstance(fence.paho_of(client), PahoClient)
    made = fence.received(b"t/x", b"p", 7, 1, True, False)
    assert (made.topic, made.payload, made.mid, made.qos, made.dup, made.retain) == (
        "t/x",
        b"p",
        7,
        1,
        True,
        False,
    )


def test_no_other_module_reaches_into_paho() -> None:
    names = [
        *(n for n in fence.PAHO_METHODS if n.startswith("_")),
        *(a for a in (*fence.PAHO_ATTRIBUTES, *fence.MESSAGE_ATTRIBUTES) if a.startswith("_")),
        "_disconnected",
    ]
    # ``x._name`` on anything but ``self`` (a class's own attributes may share a name)
    reach = re.compile(r"(?<!\bself)\.(" + "|".join(map(re.escape, names)) + r")\b|(?<!\bself)\._client\.")
    found = []
    for folder in ("cloud", "edge", "floodgate", "simulators", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "cloud" / "paho_internals.py":
                continue
            text = path.read_text(encoding="utf-8")
            if "paho" not in text and "aiomqtt" not in text and "mqtt" not in text:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if reach.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "paho's private parts only through cloud/paho_internals.py:\n" + "\n".join(found)


def test_the_cloud_extra_pins_the_minor_version_the_fence_was_checked_against() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    cloud = pyproject[pyproject.index("cloud = [") :]
    assert '"paho-mqtt>=2.2,<2.3"' in cloud[: cloud.index("]")]
    assert paho.mqtt.__version__.startswith("2.2."), f"installed {PAHO}, the cloud extra pins 2.2.x"
