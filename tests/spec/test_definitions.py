"""The Dispatch request body against every rule of the API reference."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from marshmallow import ValidationError

from app.model.state import Channel, MessageStatus
from app.spec.definitions import load_definition
from tests import payloads

VALID = payloads.fixture("dispatch_request_failover.json")


def changed(*edits: tuple[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    for path, value in edits:
        *parents, leaf = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        index: Any = int(leaf) if isinstance(node, list) else leaf
        if value is ...:
            del node[index]
        else:
            node[index] = value
    return data


def errors_of(data: Any) -> Any:
    with pytest.raises(ValidationError) as caught:
        load_definition(data)
    return caught.value.messages


def at(errors: Any, path: str) -> list[str]:
    node = errors
    for key in path.split("."):
        node = node[int(key)] if key.isdigit() and int(key) in node else node[key]
    return node["_schema"] if isinstance(node, dict) else node  # type: ignore[no-any-return]


def test_a_three_step_failover_loads_as_steps() -> None:
    definition = load_definition(VALID)
    assert [(s.channel, s.condition_status, s.expiry_time) for s in definition.steps] == [
        (Channel.MESSENGER, MessageStatus.READ, 600),
        (Channel.VIBER_SERVICE_MSG, MessageStatus.DELIVERED, 300),
        (Channel.SMS, None, None),
    ]


def test_the_references_own_example_is_refused_for_its_last_failover() -> None:
    errors = errors_of(payloads.fixture("dispatch_request_sample.json"))
    assert errors == {"workflow": {0: {"failover": ["The last message must not have a failover."]}}}


RULES = [
    # (edits, error path, message fragment)
    ((("template", "cascade"),), "template", "Must be one of"),
    ((("template", ...),), "template", "Missing data"),
    ((("workflow", []),), "workflow", "Length must be between 1 and 10"),
    ((("workflow.0.failover", ...),), "workflow.0.failover", "Every message but the last"),
    (
        (("workflow.2.failover", {"expiry_time": 60, "condition_status": "delivered"}),),
        "workflow.2.failover",
        "last message must not have",
    ),
    (
        (("workflow.0.failover.expiry_time", 14),),
        "workflow.0.failover.expiry_time",
        "greater than or equal to 15",
    ),
    (
        (("workflow.0.failover.expiry_time", 86401),),
        "workflow.0.failover.expiry_time",
        "less than or equal to 86400",
    ),
    (
        (("workflow.0.failover.expiry_time", "600"),),
        "workflow.0.failover.expiry_time",
        "Not a valid integer",
    ),
    (
        (("workflow.1.failover.condition_status", "seen"),),
        "workflow.1.failover.condition_status",
        "Must be one of",
    ),
    ((("workflow.0.to.type", "telegram"),), "workflow.0.to.type", "Must be one of"),
    ((("workflow.0.from.type", "sms"),), "workflow.0.from.type", "same channel"),
    ((("workflow.0.to.id", ...),), "workflow.0.to.id", "Required for messenger"),
    ((("workflow.0.from.id", ...),), "workflow.0.from.id", "Required for messenger"),
    ((("workflow.1.from.id", ...),), "workflow.1.from.id", "Required for viber_service_msg"),
    ((("workflow.2.to.number", ...),), "workflow.2.to.number", "Required for sms"),
    ((("workflow.2.to.number", "+447700900000"),), "workflow.2.to.number", "without a leading +"),
    ((("workflow.2.to.number", "00447700900000"),), "workflow.2.to.number", "without a leading +"),
    (
        (("workflow.2.to.number", "4" * 51),),
        "workflow.2.to.number",
        "Length must be between 1 and 50",
    ),
    ((("workflow.0.to.id", ""),), "workflow.0.to.id", "Length must be between 1 and 50"),
    (
        (("workflow.0.message.content.text", "x" * 641),),
        "workflow.0.message.content.text",
        "limited to 640",
    ),
    (
        (("workflow.1.message.content.text", "x" * 1001),),
        "workflow.1.message.content.text",
        "limited to 1000",
    ),
    (
        (("workflow.0.message.content.text", "x" * 4097),),
        "workflow.0.message.content.text",
        "between 1 and 4096",
    ),
    (
        (("workflow.0.message.content.type", "template"),),
        "workflow.0.message.content.type",
        "messenger supports",
    ),
    (
        (("workflow.2.message.content.type", "image"),),
        "workflow.2.message.content.type",
        "sms supports text",
    ),
    (
        (("workflow.1.message.content.type", "audio"),),
        "workflow.1.message.content.type",
        "viber_service_msg supports",
    ),
    (
        (("workflow.0.message.content.type", "image"),),
        "workflow.0.message.content.image",
        "Required for type image",
    ),
    (
        (
            ("workflow.0.message.content.type", "image"),
            ("workflow.0.message.content.image", {"url": "https://x/a.png", "caption": "hi"}),
        ),
        "workflow.0.message.content.image.caption",
        "WhatsApp only",
    ),
    (
        (
            ("workflow.0.message.content.type", "image"),
            ("workflow.0.message.content.image", {"url": ""}),
        ),
        "workflow.0.message.content.image.url",
        "between 1 and 2000",
    ),
    (
        (("workflow.1.message.viber_service_msg.ttl", 29),),
        "workflow.1.message.viber_service_msg.ttl",
        "greater than or equal to 30",
    ),
    (
        (("workflow.1.message.viber_service_msg.category", "spam"),),
        "workflow.1.message.viber_service_msg.category",
        "Must be one of",
    ),
    (
        (("workflow.0.message.messenger", {"category": "message_tag"}),),
        "workflow.0.message.messenger.tag",
        "Required when category is message_tag",
    ),
    (
        (("workflow.0.message.whatsapp", {"policy": "random"}),),
        "workflow.0.message.whatsapp.policy",
        "Must be one of",
    ),
    ((("workflow.2.message", ...),), "workflow.2.message", "Missing data"),
]


@pytest.mark.parametrize(("edits", "path", "fragment"), RULES)
def test_each_rule_of_the_reference(
    edits: tuple[tuple[str, Any], ...], path: str, fragment: str
) -> None:
    messages = at(errors_of(changed(*edits)), path)
    assert any(fragment in m for m in messages), messages


def test_sms_fails_over_on_delivered_only() -> None:
    sms_first = changed(
        (
            "workflow.0",
            copy.deepcopy(VALID["workflow"][2])
            | {"failover": {"expiry_time": 60, "condition_status": "read"}},
        ),
    )
    assert at(errors_of(sms_first), "workflow.0.failover.condition_status") == [
        "SMS can only fail over on delivered."
    ]


def test_whatsapp_templates_and_captions_are_accepted() -> None:
    whatsapp = {
        "to": {"type": "whatsapp", "number": "447700900000"},
        "from": {"type": "whatsapp", "number": "447700900001"},
        "message": {
            "content": {"type": "image", "image": {"url": "https://x/a.png", "caption": "hi"}},
            "whatsapp": {"policy": "deterministic", "locale": "en-GB"},
        },
        "failover": {"expiry_time": 15, "condition_status": "read"},
    }
    template = copy.deepcopy(whatsapp)
    template["message"]["content"] = {
        "type": "template",
        "template": {
            "name": "whatsapp:hsm:technology:vonage:verify",
            "parameters": [{"default": "1"}],
        },
    }
    body = {"template": "failover", "workflow": [whatsapp, template, VALID["workflow"][2]]}
    assert [s.channel for s in load_definition(body).steps] == [
        Channel.WHATSAPP,
        Channel.WHATSAPP,
        Channel.SMS,
    ]


def test_every_problem_is_listed_at_once() -> None:
    errors = errors_of(
        changed(
            ("template", "x"),
            ("workflow.0.failover.expiry_time", 1),
            ("workflow.0.to.id", ...),
            ("workflow.2.to.number", "+1"),
        )
    )
    assert set(errors) == {"template", "workflow"}
    assert set(errors["workflow"][0]) == {"failover", "to"}
    assert "to" in errors["workflow"][2]


@pytest.mark.parametrize("body", [[], "failover", None, {"workflow": "sms"}])
def test_bodies_of_the_wrong_shape(body: Any) -> None:
    assert errors_of(body)
