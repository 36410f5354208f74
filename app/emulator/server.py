"""The stand-in's HTTP side: Dispatch's POST /v0.1/dispatch, the Messages API's POST
/v1/messages with failover, and a worker that delivers callbacks."""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jwt
from flask import Flask, Response, jsonify, request
from marshmallow import ValidationError

from app.emulator.plan import Delivery, Plan, Scenario, plan, plan_messages, started_for
from app.spec.definitions import load_definition
from app.spec.messages_request import load_failover_request

log = logging.getLogger(__name__)
# Either API's planner: (request, scenario, seed, started) -> the callbacks to send.
Planner = Callable[[dict[str, Any], Scenario, int, datetime], Plan]
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # real seconds between attempts


@dataclass
class EmulatorConfig:
    webhook_base_url: str
    # One URL for every callback, as Dispatch sends both kinds to an
    # application's status URL; unset, each kind goes to its own URL.
    status_url: str | None = None
    scenario: Scenario = field(default_factory=Scenario)
    seed: int = 0
    time_scale: float = 1.0  # emulated seconds per real second
    api_key: str = "emulator"
    api_secret: str = "emulator"
    signature_secret: str | None = None
    public_key: str | None = None  # PEM; verifies bearer JWTs when given
    # How the Messages API's status webhooks spell the workflow object: "net" or "java".
    workflow_spelling: str = "net"


@dataclass(order=True)
class _Job:
    due: float
    order: int
    delivery: Delivery = field(compare=False)
    dispatch_uuid: str = field(compare=False)
    attempts: int = field(default=0, compare=False)


class Deliverer:
    """Sends each callback when it is due, signed when a secret is set; retries on failure."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._heap: list[_Job] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self.sent: dict[str, list[dict[str, Any]]] = {}
        self.failed = 0
        self.in_flight = 0
        threading.Thread(target=self._run, name="deliverer", daemon=True).start()

    def schedule(self, the_plan: Plan) -> None:
        start = time.monotonic()
        with self._cv:
            self.sent.setdefault(the_plan.dispatch_uuid, [])
            for delivery in the_plan.deliveries:
                due = start + delivery.deliver_at / self.config.time_scale
                heapq.heappush(
                    self._heap, _Job(due, next(self._order), delivery, the_plan.dispatch_uuid)
                )
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap) + self.in_flight

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0].due > time.monotonic():
                    timeout = self._heap[0].due - time.monotonic() if self._heap else None
                    self._cv.wait(timeout)
                job = heapq.heappop(self._heap)
                self.in_flight += 1
            try:
                self._attempt(job)
            finally:
                with self._cv:
                    self.in_flight -= 1

    def _attempt(self, job: _Job) -> None:
        body = json.dumps(job.delivery.payload).encode()
        url = self.config.status_url or (
            f"{self.config.webhook_base_url.rstrip('/')}/webhooks/{job.delivery.kind}"
        )
        headers = {"Content-Type": "application/json"}
        if self.config.signature_secret:
            headers["Authorization"] = "Bearer " + sign(body, self.config.signature_secret)
        job.attempts += 1
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout=10
            ) as answer:
                code = answer.status
        except urllib.error.HTTPError as error:
            code = error.code
            error.close()  # it holds the connection open until closed
        except (urllib.error.URLError, OSError):
            code = 0
        record = {
            "kind": job.delivery.kind,
            "status": job.delivery.payload.get("status"),
            "attempts": job.attempts,
            "code": code,
        }
        if 200 <= code < 300:
            with self._cv:
                self.sent[job.dispatch_uuid].append(record)
            return
        if job.attempts > len(RETRY_DELAYS):
            log.warning(
                "giving up on a %s callback after %d attempts", job.delivery.kind, job.attempts
            )
            with self._cv:
                self.failed += 1
                self.sent[job.dispatch_uuid].append(record)
            return
        # As a provider does: the same callback again, later (signed afresh).
        job.due = time.monotonic() + RETRY_DELAYS[job.attempts - 1]
        with self._cv:
            heapq.heappush(self._heap, job)
            self._cv.notify()


def sign(body: bytes, secret: str) -> str:
    """A signed-webhook JWT as Vonage makes them: HS256, with the body's SHA-256."""
    claims = {
        "iat": int(time.time()),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _problem(code: int, title: str, detail: str, **extra: Any) -> Response:
    """Errors in the shape Vonage's APIs use (RFC 7807 problem details)."""
    response = jsonify(
        type=f"https://developer.nexmo.com/api-errors#{code}",
        title=title,
        detail=detail,
        instance=str(uuid.uuid4()),
        **extra,
    )
    response.status_code = code
    response.content_type = "application/problem+json"
    return response


def _flatten(errors: Any, prefix: str = "") -> list[dict[str, str]]:
    if isinstance(errors, dict):
        found: list[dict[str, str]] = []
        for key, value in errors.items():
            name = prefix if key == "_schema" else f"{prefix}.{key}" if prefix else str(key)
            found += _flatten(value, name)
        return found
    return [{"name": prefix or "body", "reason": str(reason)} for reason in errors]


def create_emulator(config: EmulatorConfig) -> Flask:
    app = Flask(__name__)
    deliverer = Deliverer(config)
    plans: dict[str, Plan] = {}
    # Each workflow's seed is drawn from the run's: runs with nearby seeds
    # share no workflow (counting up from the seed would shift them by one).
    seeds = random.Random(config.seed)

    def authorized() -> bool:
        scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
        if scheme == "Basic":
            expected = f"{config.api_key}:{config.api_secret}".encode()
            try:
                return hmac.compare_digest(base64.b64decode(value, validate=True), expected)
            except ValueError:
                return False
        if scheme == "Bearer":
            try:
                if config.public_key:
                    claims = jwt.decode(value, config.public_key, algorithms=["RS256"])
                else:
                    claims = jwt.decode(value, options={"verify_signature": False})
            except jwt.PyJWTError:
                return False
            return bool(claims.get("application_id"))
        return False

    def _play(validate: Callable[[Any], Any], planner: Planner) -> Plan | Response:
        """What a send does for either API: credentials, validation, scenario, plan, deliveries.

        Returns the plan being played, or the problem to answer instead.
        """
        if not authorized():
            return _problem(401, "Invalid credentials supplied", "Basic or bearer JWT is required.")
        body = request.get_json(silent=True)
        try:
            validate(body)
        except ValidationError as exc:
            return _problem(
                422,
                "Invalid params",
                "The value of one or more parameters is invalid.",
                invalid_parameters=_flatten(exc.messages),
            )
        assert isinstance(body, dict)  # both validators refuse anything else
        scenario = _scenario()
        if isinstance(scenario, Response):
            return scenario
        seed, now = seeds.getrandbits(64), datetime.now(UTC)
        # Planned twice: once to know how long it runs, then from the start
        # that keeps every event's time before its sending.
        the_plan = planner(body, scenario, seed, now)
        the_plan = planner(body, scenario, seed, started_for(the_plan, now, config.time_scale))
        plans[the_plan.dispatch_uuid] = the_plan
        deliverer.schedule(the_plan)
        return the_plan

    @app.post("/v0.1/dispatch")
    def dispatch() -> Response | tuple[Response, int]:
        played = _play(load_definition, plan)
        if isinstance(played, Response):
            return played
        return jsonify(dispatch_uuid=played.dispatch_uuid), 202

    @app.post("/v1/messages")
    def messages() -> Response | tuple[Response, int]:
        """The Messages API's send, with `failover`: one workflow of items."""

        def planner(body: dict[str, Any], scenario: Scenario, seed: int, at: datetime) -> Plan:
            return plan_messages(body, scenario, seed, at, config.workflow_spelling)

        played = _play(load_failover_request, planner)
        if isinstance(played, Response):
            return played
        first = played.deliveries[0].payload["message_uuid"] if played.deliveries else None
        return jsonify(message_uuid=first, workflow_id=played.dispatch_uuid), 202

    def _scenario() -> Scenario | Response:
        override = request.headers.get("X-Emulator-Scenario")
        if not override:
            return config.scenario
        try:
            return Scenario.from_document(json.loads(override))
        except (ValueError, TypeError) as exc:
            return _problem(400, "Invalid scenario", str(exc))

    @app.get("/_emulator/dispatches/<dispatch_uuid>")
    def played(dispatch_uuid: str) -> Response | tuple[Response, int]:
        the_plan = plans.get(dispatch_uuid)
        if the_plan is None:
            return _problem(404, "Not found", "No such dispatch.")
        # What was charged: one price per message, as the status callbacks carry it.
        prices: dict[str, Decimal] = {}
        for d in the_plan.deliveries:
            usage = d.payload.get("usage") if "message_uuid" in d.payload else None
            if usage:
                prices[d.payload["message_uuid"]] = Decimal(usage["price"])
        return jsonify(
            dispatch_uuid=dispatch_uuid,
            cost={"EUR": format(sum(prices.values(), Decimal(0)), "f")} if prices else {},
            outcome=the_plan.outcome,
            winning_step=the_plan.winning_step,
            planned=len(the_plan.deliveries),
            delivered=deliverer.sent.get(dispatch_uuid, []),
        )

    @app.get("/_emulator/status")
    def status() -> Response:
        return jsonify(pending=deliverer.pending(), failed=deliverer.failed, dispatches=len(plans))

    return app
