"""GET /dashboard: how delivery is going, server-rendered (charts are inline SVG, no build step)."""

from __future__ import annotations

import hmac
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, render_template, request

from app import backlog, readmodel, workflows
from app.errors import ApiError
from app.extensions import get_db, get_settings
from app.queries import sql
from app.times import iso

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

COLOURS = {
    "sent": "#94a3b8",
    "delivered": "#2563eb",
    "read": "#16a34a",
    "failed": "#dc2626",
    "submitted": "#94a3b8",
    "rejected": "#dc2626",
    "undeliverable": "#f97316",
}


@bp.before_request
def require_password() -> Response | None:
    """HTTP Basic with DASHBOARD_PASSWORD (any user name); without one the dashboard is off."""
    password = get_settings().dashboard_password
    if not password:
        raise ApiError(404, "The dashboard is off: set DASHBOARD_PASSWORD to enable it.")
    given = request.authorization.password if request.authorization else None
    if given is None or not hmac.compare_digest(given.encode(), password.encode()):
        return Response(
            "Password required.", 401, {"WWW-Authenticate": 'Basic realm="dispatch-ledger"'}
        )
    return None


def _days() -> int:
    try:
        days = int(request.args.get("days", "7"))
    except ValueError:
        days = 0
    if not 1 <= days <= 366:
        raise ApiError(400, "days must be a whole number from 1 to 366.")
    return days


API_FILTERS = ("all", "dispatch", "messages")
API_LABELS = {"all": "both APIs", "dispatch": "Dispatch", "messages": "Messages API"}


def _api() -> str:
    api = request.args.get("api", "all")
    if api not in API_FILTERS:
        raise ApiError(400, "api must be all, dispatch or messages.")
    return api


@bp.get("")
def overview() -> str:
    """Per-channel funnel and failover rates for a period, recent and overdue workflows."""
    days = _days()
    api = _api()
    chosen: dict[str, object] = {"api": None if api == "all" else api}
    now = datetime.now(UTC)
    since: date = (now - timedelta(days=days - 1)).date()
    chosen["since"] = since
    db = get_db()
    funnel, failover, recent = db.run(
        lambda conn: (
            conn.execute(sql("dashboard_funnel"), chosen).fetchall(),
            conn.execute(sql("dashboard_failover"), chosen).fetchall(),
            conn.execute(sql("list_recent"), {"limit": 20, "api": chosen["api"]}).fetchall(),
        )
    )
    settings = get_settings()
    overdue = workflows.overdue(
        db, now, settings.overdue_grace_seconds, 20, settings.last_step_timeout_seconds
    )
    return render_template(
        "dashboard.html",
        backlog=backlog.summary(db),
        failed=backlog.failed(db, 20),
        days=days,
        since=since,
        api=api,
        api_filters=API_FILTERS,
        api_labels=API_LABELS,
        funnel=_bars(funnel, ("sent", "delivered", "read", "failed")),
        failover=failover,
        recent=recent,
        overdue=overdue,
        colours=COLOURS,
        iso=iso,
    )


def _bars(rows: list[Any], series: tuple[str, ...]) -> dict[str, Any]:
    """Grouped bars, one group per channel, scaled to the largest value."""
    top = max([row[s] for row in rows for s in series] + [1])
    groups = []
    for row in rows:
        bars = [{"series": s, "value": row[s], "height": 160 * row[s] / top} for s in series]
        groups.append({"channel": row["channel"], "bars": bars, "row": row})
    return {"groups": groups, "series": series, "top": top}


@bp.get("/workflows/<id:dispatch_uuid>")
def timeline(dispatch_uuid: str) -> str:
    """One workflow's timeline: each step, its statuses over time, its deadline, the outcome."""
    document = readmodel.workflow(get_db(), dispatch_uuid)
    if document is None:
        raise ApiError(404, f"No workflow with dispatch_uuid {dispatch_uuid!r} has been seen.")
    rows = _timeline_rows(document)
    return render_template(
        "timeline.html", workflow=document, rows=rows["rows"], axis=rows["axis"], colours=COLOURS
    )


def _timeline_rows(document: dict[str, Any]) -> dict[str, Any]:
    """Place every status and deadline on one time axis, 800 px wide."""

    def parse(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    by_uuid = {m["message_uuid"]: m for m in document["messages"]}
    steps = document["steps"] or [
        {
            "step": n + 1,
            "channel": m["channel"],
            "message_uuid": m["message_uuid"],
            "deadline": None,
            "outcome": m["status"],
            "condition_status": None,
        }
        for n, m in enumerate(document["messages"])
    ]
    times = [parse(t) for m in document["messages"] for t in m["statuses"].values()]
    times += [parse(s["deadline"]) for s in steps]
    known = [t for t in times if t is not None]
    if not known:
        return {"rows": [], "axis": None}
    start, end = min(known), max(known)
    span = max((end - start).total_seconds(), 1.0)

    def x(moment: datetime) -> float:
        return 40 + 760 * (moment - start).total_seconds() / span

    rows = []
    for step in steps:
        message = by_uuid.get(step["message_uuid"] or "")
        events = []
        if message:
            for status, at in message["statuses"].items():
                moment = parse(at)
                assert moment is not None
                events.append({"status": status, "x": x(moment), "at": at})
        deadline = parse(step["deadline"])
        submitted = events[0]["x"] if events else None
        rows.append(
            {
                "step": step,
                "events": events,
                "deadline_x": x(deadline) if deadline else None,
                "start_x": submitted,
            }
        )
    return {"rows": rows, "axis": {"start": iso(start), "end": iso(end)}}
