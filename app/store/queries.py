"""Named SQL statements, loaded once from the `.sql` files under sql/queries/."""

from __future__ import annotations

import re
from functools import cache

from app.locations import SQL_DIR

QUERIES_DIR = SQL_DIR / "queries"
_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class UnknownQuery(KeyError):
    """Python asked for a statement that no .sql file defines."""


def parse(text: str, source: str = "<string>") -> dict[str, str]:
    """Split a file into `-- name: x` blocks (name, one-line description, statement)."""
    queries: dict[str, str] = {}
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"{source}: query {name!r} needs a one-line description")
        statement = "\n".join(lines[1:]).strip().rstrip(";").strip()
        if not statement:
            raise ValueError(f"{source}: query {name!r} has no statement")
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        queries[name] = statement
    return queries


@cache
def _all() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        for name, statement in parse(path.read_text(encoding="utf-8"), str(path)).items():
            if name in queries:
                raise ValueError(f"{path}: query {name!r} is already defined in another file")
            queries[name] = statement
    return queries


def sql(name: str) -> str:
    """The statement called `name`. Statements come from our own files, never from input."""
    try:
        return _all()[name]
    except KeyError:
        raise UnknownQuery(name) from None
