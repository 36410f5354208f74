"""Every value the schema accepts is stored and applied exactly: long prices, edge times."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests import payloads
from tests.conftest import post, query
from tests.read.test_workflows_api import AUTH, REQUEST, api, api_app  # noqa: F401 - fixtures

D = "d-exact"

PRICES = [
    ("1" * 29, "2" * 29, "3" * 29),  # 29 digits: Python's default context keeps 28
    ("0." + "1" * 28, "0." + "2" * 28, "0." + "3" * 28),  # 29 significant digits
    # The longest: 50 characters each; their sum needs 98 digits.
    ("9" * 50, "0." + "0" * 47 + "1", "9" * 50 + "." + "0" * 47 + "1"),
    ("100", "0.0100", "100.01"),  # trailing zeros: one spelling of each amount
]


def _status(uuid: str, status: str, at: str, channel: str, **kw: Any) -> dict[str, Any]:
    return payloads.status(uuid, status, at, channel=channel, dispatch_uuid=D, **kw)


@pytest.mark.parametrize(("first", "second", "total"), PRICES)
def test_prices_of_up_to_50_characters_are_kept_and_summed_exactly(
    api: FlaskClient,  # noqa: F811
    clean_db: str,
    first: str,
    second: str,
    total: str,
) -> None:
    assert api.put(f"/workflows/{D}/definition", json=REQUEST, headers=AUTH).status_code == 201
    at = "2026-03-01T09:00:00Z"
    for uuid, channel, price in (("m1", "messenger", first), ("m2", "viber_service_msg", second)):
        response = post(api, "status", _status(uuid, "rejected", at, channel, price=price))
        assert response.status_code == 200, response.json
    document = api.get(f"/workflows/{D}").json
    assert document is not None
    assert document["usage"] == {"EUR": total}
    # Each price as sent, less trailing zeros (0.0100 and 0.01 are one amount).
    spelled = [p.rstrip("0").rstrip(".") if "." in p else p for p in (first, second)]
    assert [m["usage"] for m in document["messages"]] == [{"EUR": p} for p in spelled]
    # The same sums in SQL: the rollup and the analysts' view.
    assert query(clean_db, "SELECT computed_cost FROM dispatch") == [(Decimal(total),)]
    [(cost,)] = query(clean_db, "SELECT sum(cost) FROM analytics.channel_cost_daily")
    assert cost == Decimal(total)


EDGE_TIMES = [
    # In UTC these fall outside Python's years, so only offsets can carry them.
    ("9999-12-31T23:00:00-05:00", "9999-12-31T23:05:00-05:00"),
    ("0001-01-01T00:00:00+14:00", "0001-01-01T00:05:00+14:00"),
    # Its deadline (600 s on) is in year 10000 in UTC, and is still kept.
    ("9999-12-31T23:59:00Z", "9999-12-31T23:59:59.999999Z"),
    # Its deadline is past any time that can be written: no deadline.
    ("9999-12-31T23:59:00-23:59", "9999-12-31T23:59:30-23:59"),
]


@pytest.mark.parametrize(("submitted", "read"), EDGE_TIMES)
def test_times_at_the_edges_of_the_calendar_are_applied_with_a_definition(
    api: FlaskClient,  # noqa: F811
    submitted: str,
    read: str,
) -> None:
    assert api.put(f"/workflows/{D}/definition", json=REQUEST, headers=AUTH).status_code == 201
    assert (
        post(api, "status", _status("m1", "submitted", submitted, "messenger")).status_code == 200
    )
    pending = api.get(f"/workflows/{D}").json
    assert pending is not None and pending["status"] == "pending"
    # The first step's expiry is 600 s; a deadline past representable time is none.
    if submitted.endswith("-23:59"):
        assert pending["deadline"] is None
    else:
        deadline = datetime.fromisoformat(pending["deadline"])
        assert deadline - timedelta(seconds=600) == datetime.fromisoformat(submitted)
    assert post(api, "status", _status("m1", "read", read, "messenger")).status_code == 200
    # Replacing the definition re-decides the workflow from the stored times.
    assert api.put(f"/workflows/{D}/definition", json=REQUEST, headers=AUTH).status_code == 200
    done = api.get(f"/workflows/{D}").json
    assert done is not None and done["status"] == "completed"
    assert done["winning_step"] == 1
    message = api.get("/messages/m1").json
    assert message is not None and set(message["statuses"]) == {"submitted", "read"}
    assert api.get("/workflows?overdue=true").status_code == 200
