"""The README's receiver, as printed there, takes a real delivery and refuses a forged one."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import decide_one
from tests.outbound.receiver import receiving
from tests.outbound.test_delivery import deliverer, owner, owner_app, register
from tests.servers import ROOT

__all__ = ["owner", "owner_app"]  # fixtures


def readme_receiver(secret: str) -> Any:
    text = (ROOT / "README.md").read_text()
    [code] = [
        block
        for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL)
        if "standardwebhooks" in block
    ]
    assert 'Webhook("whsec_...")' in code
    seen: dict[str, Any] = {"__name__": "__main__"}  # as when run as a script
    exec(code.replace('"whsec_..."', repr(secret)), seen)  # our own README's code
    return seen["app"]


def test_the_readmes_receiver_checks_what_the_ledger_sends(owner: FlaskClient, capsys: Any) -> None:
    with receiving() as receiver:
        added = register(owner, receiver.url, events=["workflow.decided"])
        decide_one(owner, "d-1")
        deliverer(owner).turn()
    [delivery] = receiver.received
    app = readme_receiver(added["secret"]).test_client()
    headers = {k: v for k, v in delivery.headers.items() if k.lower().startswith("webhook-")}
    answer = app.post(
        "/hooks/vonage", data=delivery.body, headers=headers, content_type="application/json"
    )
    assert answer.status_code == 204
    forged = delivery.body.replace(b'"completed"', b'"error"')
    assert forged != delivery.body
    answer = app.post(
        "/hooks/vonage", data=forged, headers=headers, content_type="application/json"
    )
    assert answer.status_code == 400
    assert "reached by no channel" not in capsys.readouterr().out
