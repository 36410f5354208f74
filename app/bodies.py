"""Where the JSON bodies of the owner's endpoints are read: same limits and errors as callbacks'."""

from __future__ import annotations

from typing import Any

from flask import request

from app.errors import ApiError
from app.extensions import get_settings
from app.spec import intake
from app.spec.intake import Rejection


def json_body() -> Any:
    """The request's JSON body within MAX_BODY_BYTES and MAX_JSON_DEPTH; else an error envelope."""
    settings = get_settings()
    try:
        intake.check_media_type(request.headers.get("Content-Type"))
        body = request.get_data(cache=True)
        if len(body) > settings.max_body_bytes:
            raise intake.too_large(settings.max_body_bytes)
        return intake.parse_json(body, settings.max_json_depth)
    except Rejection as rejection:
        raise ApiError.from_rejection(rejection) from None
