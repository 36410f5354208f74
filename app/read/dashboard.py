"""GET /dashboard: how delivery is going, server-rendered (charts are inline SVG, no build step)."""

from __future__ import annotations

import hmac
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from app.errors import ApiError
from app.extensions import get_db, get_reports_db, get_settings
from app.model.times import display, iso, plus
from app.read import readmodel
from app.read.overdue import list_overdue
from app.spec.schemas import is_id
from app.store import backlog, endpoints
from app.store.queries import sql

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
        page = render_template(
            "error.html",
            code=401,
            title="Password required",
            message="The dashboard asks for DASHBOARD_PASSWORD (any user name).",
            back=False,
        )
        return Response(page, 401, {"WWW-Authenticate": 'Basic realm="dispatch-ledger"'})
    return None


@bp.errorhandler(ApiError)
def error_page(error: HTTPException) -> Response:
    """The dashboard's errors are pages for people, with a way back (the API's stay JSON)."""
    code = error.code or 500
    titles = {400: "That cannot be shown", 404: "Not found", 405: "Not allowed here"}
    message = error.description if code < 500 else "The server failed to show this page."
    page = render_template(
        "error.html",
        code=code,
        title=titles.get(code, "Something went wrong"),
        message=message,
        back=get_settings().dashboard_password is not None,
    )
    response = Response(page, code, mimetype="text/html")
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@bp.app_template_filter("when")
def when(value: datetime | str | None) -> str:
    """Every time on the dashboard in one format (app.model.times.display)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return display(value)


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
    # The charts read DASHBOARD_DATABASE_URL (a standby) when set; what an
    # operator acts on now (overdue, the backlog, endpoints) reads the primary.
    funnel, failover, recent = get_reports_db().run(
        lambda conn: (
            conn.execute(sql("dashboard_funnel"), chosen).fetchall(),
            conn.execute(sql("dashboard_failover"), chosen).fetchall(),
            conn.execute(sql("list_recent"), {"limit": 20, "api": chosen["api"]}).fetchall(),
        )
    )
    hooks = db.run(endpoints.listed)
    settings = get_settings()
    overdue = list_overdue(
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
        endpoints=hooks,
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


@bp.get("/find")
def find() -> WerkzeugResponse:
    """A workflow by its id (dispatch_uuid or workflow_id), or by one of its messages' ids."""
    wanted = (request.args.get("id") or "").strip()
    if not wanted:
        raise ApiError(400, "Give a workflow's or a message's id.")
    if not is_id(wanted):
        # A NUL, say: nothing a callback could carry, and PostgreSQL refuses it.
        raise ApiError(404, f"No workflow or message can have the id {wanted!r}.")
    # The rows only: which page to show, not the documents themselves.
    workflow, message = get_db().run(
        lambda conn: (
            conn.execute(sql("get_dispatch"), {"dispatch_uuid": wanted}).fetchone(),
            conn.execute(sql("get_message"), {"message_uuid": wanted}).fetchone(),
        )
    )
    if workflow is not None:
        return redirect(url_for("dashboard.timeline", dispatch_uuid=wanted))
    if message is not None and message["dispatch_uuid"]:
        return redirect(url_for("dashboard.timeline", dispatch_uuid=message["dispatch_uuid"]))
    if message is not None:
        raise ApiError(404, f"Message {wanted!r} is known, but belongs to no workflow.")
    raise ApiError(404, f"No workflow or message has the id {wanted!r}.")


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


# The timeline's drawing area, in px: where the axis starts and how wide it is.
AXIS_LEFT, AXIS_WIDTH = 40, 760
# Dots closer than this (px) on one row go on a lane below, so none hides another.
DOT_SPACING = 15
TICKS = 5


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _timeline_rows(document: dict[str, Any]) -> dict[str, Any]:
    """Place every status, waiting window and deadline on one time axis, with its ticks."""
    by_uuid = {m["message_uuid"]: m for m in document["messages"]}
    steps = document["steps"] or [
        {
            "step": n + 1,
            "channel": m["channel"],
            "message_uuid": m["message_uuid"],
            "deadline": None,
            "settled_at": None,
            "outcome": m["status"],
            "condition_status": None,
        }
        for n, m in enumerate(document["messages"])
    ]
    times = [_parse(t) for m in document["messages"] for t in m["statuses"].values()]
    times += [_parse(s["deadline"]) for s in steps]
    known = [t for t in times if t is not None]
    if not known:
        return {"rows": [], "axis": None}
    start, end = min(known), max(known)
    span = max((end - start).total_seconds(), 1.0)

    def x(moment: datetime) -> float:
        return AXIS_LEFT + AXIS_WIDTH * (moment - start).total_seconds() / span

    rows = []
    for step in steps:
        message = by_uuid.get(step["message_uuid"] or "")
        events: list[dict[str, Any]] = []
        if message:
            ordered = sorted(message["statuses"].items(), key=lambda kv: (kv[1], kv[0]))
            for status, at in ordered:
                moment = _parse(at)
                assert moment is not None
                events.append({"status": status, "x": x(moment), "at": at, "lane": 0})
        # Each dot too close to one already on a lane moves to the next lane.
        lanes: list[float] = []
        for event in events:
            lane = next(
                (i for i, last in enumerate(lanes) if event["x"] - last >= DOT_SPACING), len(lanes)
            )
            if lane == len(lanes):
                lanes.append(event["x"])
            lanes[lane] = event["x"]
            event["lane"] = lane
        deadline = _parse(step["deadline"])
        settled = _parse(step.get("settled_at"))
        submitted = events[0]["x"] if events else None
        # The step waited from its submission until its outcome, or its deadline if none yet.
        window_end = min(settled, deadline) if settled and deadline else deadline
        rows.append(
            {
                "step": step,
                "events": events,
                "lanes": max(len(lanes), 1),
                "deadline_x": x(deadline) if deadline else None,
                "start_x": submitted,
                "window_end_x": x(window_end) if window_end else None,
            }
        )
    ticks = [
        {
            "x": AXIS_LEFT + AXIS_WIDTH * i / (TICKS - 1),
            # times.plus: a tick past 9999-12-31 in UTC has no UTC form in Python.
            "at": plus(start, (end - start) * i / (TICKS - 1)) or end,
        }
        for i in range(TICKS)
    ]
    return {"rows": rows, "axis": {"start": start, "end": end, "ticks": ticks}}
