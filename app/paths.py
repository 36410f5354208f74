"""The `<id:...>` URL converter: only an id a callback could carry reaches a view.

Anything else (a NUL or another control character, blank, over 200
characters: a Messages API workflow_id's limit) names nothing that can
exist, so it is answered 404 by routing, in the JSON envelope, and never
reaches the database.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.exceptions import NotFound
from werkzeug.routing import PathConverter

from app.schemas import is_id


class IdConverter(PathConverter):
    """A dispatch_uuid or message_uuid; "/" allowed anywhere, as the schema allows it."""

    regex = ".+?"
    # Said outright: werkzeug infers it from the regex, which names no "/".
    part_isolating = False

    def to_python(self, value: str) -> str:
        if not is_id(value):
            # Not routing's ValidationError: werkzeug would then answer 405
            # for a twin rule of another method (PUT vs GET .../definition).
            raise NotFound(f"No workflow or message can have the id {value!r}.")
        return value


def init_app(app: Flask) -> None:
    """Before any rule is added: the map's defaults apply to rules as they are added."""
    app.url_map.converters["id"] = IdConverter
    # An id may begin with "/" (%2F): merging slashes would redirect to
    # another id's URL instead of answering for this one.
    app.url_map.merge_slashes = False
