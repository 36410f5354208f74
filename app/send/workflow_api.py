"""Workflow definitions and listings: PUT/GET .../definition, POST /workflows, GET /workflows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.access import require_api_token, require_read_access
from app.bodies import json_body
from app.errors import ApiError
from app.extensions import get_db, get_settings
from app.model.times import iso
from app.read.overdue import list_overdue
from app.send import dispatch_client, workflows
from app.send.dispatch_client import DispatchNotConfigured, DispatchRefused, DispatchUnanswered
from app.spec.intake import Rejection
from app.store.queries import sql

bp = Blueprint("workflow_api", __name__)
# The stand-in's per-workflow scenario, passed on by POST /workflows.
SCENARIO_HEADER = "X-Emulator-Scenario"


def _validated(call: Any) -> Any:
    try:
        return call()
    except Rejection as rejection:
        raise ApiError.from_rejection(rejection) from None


@bp.put("/workflows/<id:dispatch_uuid>/definition")
def put_definition(dispatch_uuid: str) -> tuple[Response, int]:
    """Record the definition of a workflow another system sent."""
    require_api_token()
    # Dispatch's ids have at most 50 characters, the Messages API's workflow_id more.
    if not 1 <= len(dispatch_uuid) <= 200:
        raise ApiError(404, "A workflow id has 1 to 200 characters.")
    body = json_body()
    now = datetime.now(UTC)
    created = _validated(lambda: workflows.record(get_db(), dispatch_uuid, body, now))
    return jsonify(workflows.definition(get_db(), dispatch_uuid)), 201 if created else 200


@bp.get("/workflows/<id:dispatch_uuid>/definition")
def get_definition(dispatch_uuid: str) -> Response:
    """A workflow's stored definition."""
    require_api_token()
    document = workflows.definition(get_db(), dispatch_uuid)
    if document is None:
        raise ApiError(404, f"No definition is stored for {dispatch_uuid!r}.")
    return jsonify(document)


@bp.post("/workflows")
def post_workflow() -> tuple[Response, int]:
    """Validate a Dispatch or Messages API failover request, send it to Vonage, and record it."""
    require_api_token()
    body = json_body()
    settings = get_settings()
    extra = {}
    scenario = request.headers.get(SCENARIO_HEADER)
    if scenario is not None:
        # For the stand-in only: Vonage would ignore it, and the sender would
        # believe a scenario was played.
        if dispatch_client.is_vonage(settings):
            raise ApiError(
                400,
                f"{SCENARIO_HEADER} is for the stand-in (dispatch-ledger emulate), but"
                " DISPATCH_API_URL is Vonage's own API: nothing was sent.",
                {SCENARIO_HEADER: ["Only with DISPATCH_API_URL pointing at a stand-in."]},
            )
        extra[SCENARIO_HEADER] = scenario
    try:
        sent: workflows.Sent = _validated(
            lambda: workflows.send(get_db(), body, settings, datetime.now(UTC), extra)
        )
    except DispatchNotConfigured as exc:
        raise ApiError(503, str(exc)) from None
    except DispatchRefused as exc:
        raise ApiError(
            502, exc.detail, {"dispatch_status": exc.status} if exc.status else None
        ) from None
    except DispatchUnanswered as exc:
        raise ApiError(504, str(exc)) from None
    # A Messages API workflow's id is its workflow_id; one name for both keeps clients simple.
    if not sent.recorded:
        # Sent all the same: 202, never an answer that invites sending it again.
        document = {"dispatch_uuid": sent.dispatch_uuid, "recorded": False}
        return jsonify(document | {"message": sent.not_recorded()}), 202
    return jsonify(dispatch_uuid=sent.dispatch_uuid, recorded=True), 202


@bp.get("/workflows")
def list_workflows() -> Response:
    """Workflows that are overdue (?overdue=true), or those whose latest event is the latest."""
    require_read_access()
    args = request.args
    limit = _int_arg("limit", 100, 1, 1000)
    # Checked whether or not it applies, as /openapi.json describes it: a
    # mistyped grace is a mistake to report, not to ignore.
    grace = _int_arg("grace", get_settings().overdue_grace_seconds, 0, 7 * 86400)
    overdue = args.get("overdue", "false").lower()
    if overdue not in ("true", "false"):
        raise ApiError(400, "overdue must be true or false.", {"overdue": ["Not a boolean."]})
    db = get_db()
    if overdue == "true":
        now = datetime.now(UTC)
        timeout = get_settings().last_step_timeout_seconds
        listed = [o.document() for o in list_overdue(db, now, grace, limit, timeout)]
        return jsonify(
            workflows=listed, as_of=iso(now), grace_seconds=grace, last_step_timeout_seconds=timeout
        )
    rows = db.run(
        lambda conn: conn.execute(sql("list_recent"), {"limit": limit, "api": None}).fetchall()
    )
    return jsonify(
        workflows=[
            {
                "dispatch_uuid": r["dispatch_uuid"],
                "api": r["api"],
                "status": r["status"],
                "decided_by": r["decided_by"],
                "reported_status": r["reported_status"],
                "current_step": r["current_step"],
                "updated_at": iso(r["updated_at"]),
                "last_event_at": iso(r["last_event_at"]) if r["last_event_at"] else None,
            }
            for r in rows
        ]
    )


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(
            400, f"{name} must be a whole number from {low} to {high}.", {name: ["Out of range."]}
        )
    return value
