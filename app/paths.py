"""The `<id:...>` URL converter: only an id a callback could carry reaches a view.

Anything else (a NUL or another control character, blank, over 200
characters: a Messages API workflow_id's limit) names nothing that can
exist, so it is answered 404 by routing, in the JSON envelope, and never
reaches the database.

An id may hold "/", and one may end in "/definition". Sent as %2F, such a
slash stays inside the id (EncodedSlashes): WSGI hands routing a decoded
path, where `/workflows/a%2Fdefinition` would be the definition of "a".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from flask import Flask, request
from werkzeug.exceptions import NotFound
from werkzeug.routing import PathConverter

from app.spec.schemas import is_id

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Stands for an encoded slash in the path routing sees. A control character:
# no id can hold one (is_id), so none is mistaken for it.
_SLASH = "\x01"
_REWRITTEN = "dispatch_ledger.encoded_slashes"
_ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)


class IdConverter(PathConverter):
    """A dispatch_uuid or message_uuid; "/" allowed anywhere, as the schema allows it."""

    regex = ".+?"
    # Said outright: werkzeug infers it from the regex, which names no "/".
    part_isolating = False

    def to_python(self, value: str) -> str:
        if request.environ.get(_REWRITTEN):
            value = value.replace(_SLASH, "/")
        if not is_id(value):
            # Not routing's ValidationError: werkzeug would then answer 405
            # for a twin rule of another method (PUT vs GET .../definition).
            raise NotFound(f"No workflow or message can have the id {value!r}.")
        return value


class EncodedSlashes:
    """Keeps each %2F of the request's raw path (gunicorn's RAW_URI) out of routing's
    slashes, for IdConverter to turn back into "/" inside its id.

    Only a path that has one is touched, and only where the server passed the
    raw path and the service is not mounted under a prefix.
    """

    def __init__(self, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        if raw.startswith("/") and not environ.get("SCRIPT_NAME") and "%" in raw:
            path = raw.partition("?")[0]
            if _ENCODED_SLASH.search(path):
                parts = [unquote_to_bytes(part) for part in _ENCODED_SLASH.split(path)]
                if not any(_SLASH.encode() in part for part in parts):
                    # As PEP 3333 has it: the path's bytes, decoded as latin-1.
                    joined = _SLASH.encode().join(parts)
                    environ = {**environ, "PATH_INFO": joined.decode("latin-1"), _REWRITTEN: True}
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask) -> None:
    """Before any rule is added: the map's defaults apply to rules as they are added."""
    app.url_map.converters["id"] = IdConverter
    # An id may begin with "/" (%2F): merging slashes would redirect to
    # another id's URL instead of answering for this one.
    app.url_map.merge_slashes = False
    app.wsgi_app = EncodedSlashes(app.wsgi_app)  # type: ignore[method-assign]
