"""Send a workflow to Vonage: Dispatch's `POST /v0.1/dispatch`, or the Messages API's
`POST /v1/messages` with `failover`; Basic or JWT (RS256) auth."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt

from app.config import Settings


class DispatchNotConfigured(RuntimeError):
    """No Dispatch credentials are configured, so nothing can be sent."""


class DispatchRefused(RuntimeError):
    """Dispatch answered, but not with 202 and a dispatch_uuid (or could not be reached)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class DispatchUnanswered(RuntimeError):
    """The request went out, but no answer came back: Vonage may have sent the workflow."""


def authorization(settings: Settings, now: float) -> str:
    """The Authorization header: a JWT when an application is configured, else Basic."""
    if settings.dispatch_application_id and settings.dispatch_private_key:
        key = settings.dispatch_private_key
        if not key.lstrip().startswith("-----BEGIN"):
            key = Path(key).read_text(encoding="utf-8")
        token = jwt.encode(
            {
                "application_id": settings.dispatch_application_id,
                "iat": int(now),
                "exp": int(now) + 300,
                "jti": str(uuid.uuid4()),
            },
            key,
            algorithm="RS256",
        )
        return f"Bearer {token}"
    if settings.dispatch_api_key and settings.dispatch_api_secret:
        pair = f"{settings.dispatch_api_key}:{settings.dispatch_api_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    raise DispatchNotConfigured(
        "set DISPATCH_API_KEY and DISPATCH_API_SECRET, or DISPATCH_APPLICATION_ID and "
        "DISPATCH_PRIVATE_KEY, to send workflows"
    )


# What to do with a workflow Vonage may have taken without saying so: sending
# it again could send its messages twice.
MAY_HAVE_BEEN_SENT = (
    "the workflow may have been sent. Do not send it again until you know it was not:"
    " its callbacks arriving (GET /workflows) would show it was."
)


def submit(request_body: Any, settings: Settings, extra: dict[str, str] | None = None) -> str:
    """Send a validated Dispatch request; returns Dispatch's dispatch_uuid."""
    status, answer = _post("/v0.1/dispatch", request_body, settings, "Dispatch", extra)
    return _taken(status, answer.get("dispatch_uuid"), 50, "Dispatch", "dispatch_uuid")


def submit_messages(
    request_body: Any, settings: Settings, extra: dict[str, str] | None = None
) -> str:
    """Send a validated Messages API failover request; returns its workflow_id."""
    status, answer = _post("/v1/messages", request_body, settings, "The Messages API", extra)
    return _taken(status, answer.get("workflow_id"), 200, "The Messages API", "workflow_id")


def _taken(status: int, ident: Any, longest: int, who: str, name: str) -> str:
    """The id Vonage answered a workflow it took with; a 2xx without one may have been taken."""
    if status == 202 and isinstance(ident, str) and 1 <= len(ident) <= longest:
        return ident
    detail = f"{who} answered {status} without a {name}"
    if 200 <= status < 300:
        detail += f": {MAY_HAVE_BEEN_SENT}"
    raise DispatchRefused(status, detail)


def is_vonage(settings: Settings) -> bool:
    """Whether DISPATCH_API_URL is Vonage's own API (not a stand-in)."""
    host = urllib.parse.urlsplit(settings.dispatch_api_url).hostname or ""
    return host.endswith((".nexmo.com", ".vonage.com")) or host in ("nexmo.com", "vonage.com")


def _post(
    path: str, body: Any, settings: Settings, who: str, extra: dict[str, str] | None
) -> tuple[int, dict[str, Any]]:
    url = settings.dispatch_api_url.rstrip("/") + path
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": authorization(settings, time.time()),
            **(extra or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.dispatch_timeout_seconds) as answer:
            status, raw = answer.status, answer.read(65536)
    except urllib.error.HTTPError as error:
        with error:  # it holds the connection open until closed
            text = error.read(2048).decode("utf-8", "replace")
        raise DispatchRefused(error.code, f"{who} answered {error.code}: {text}") from None
    except urllib.error.URLError as error:
        # urllib wraps what fails while connecting and sending: no whole
        # request reached Vonage, so nothing was sent.
        raise DispatchRefused(None, f"{who} could not be reached: {error.reason}") from None
    except OSError as error:  # TimeoutError, a connection closed while answering
        # The request was sent and no answer came back: it may have been taken.
        raise DispatchUnanswered(
            f"{who} did not answer ({error or type(error).__name__}): {MAY_HAVE_BEEN_SENT}"
        ) from None
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    return status, document if isinstance(document, dict) else {}
