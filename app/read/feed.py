"""GET /events: the change feed, every workflow event once, in the order of the commits.

A consumer keeps the `next` cursor of each page and asks for the events
after it; `wait` holds the request open (a long poll) until one comes.
The order is safe to page through under any number of appliers: see
app/store/events.py for why no event can appear behind a cursor.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from app.access import require_read_access
from app.errors import ApiError
from app.extensions import get_db
from app.read import query_args
from app.store import events

PAGE = 100
MOST_PAGE = 1000
MAX_WAIT_SECONDS = 30.0
# How often a waiting consumer looks again: a query every 0.2 s per consumer.
POLL_SECONDS = 0.2
# Cursors are feed positions, written in decimal: anything longer is no position.
CURSOR_DIGITS = 18

bp = Blueprint("feed", __name__)


@bp.get("/events")
def get_events() -> Response:
    """Events after `after` (the `next` of the page before; none: from the first kept):
    ?after=<cursor>&limit=N&wait=S."""
    require_read_access()
    after = _cursor()
    limit = query_args.whole("limit", PAGE, 1, MOST_PAGE)
    wait = query_args.seconds("wait", MAX_WAIT_SECONDS)
    db = get_db()
    deadline = time.monotonic() + wait
    while True:
        page = db.run(lambda conn: events.feed(conn, after, limit))
        if page or time.monotonic() + POLL_SECONDS > deadline:
            break
        time.sleep(POLL_SECONDS)
    position = page[-1]["position"] if page else after
    for event in page:
        del event["position"]
    return jsonify({"events": page, "next": str(position)})


def _cursor() -> int:
    raw = request.args.get("after", "0") or "0"
    if not (raw.isascii() and raw.isdigit() and len(raw) <= CURSOR_DIGITS):
        raise ApiError(
            400,
            "after must be the `next` cursor of an earlier page (or absent, from the start).",
            {"after": ["Not a cursor."]},
        )
    return int(raw)
