"""Where the service's own files are: a checkout's, or an installed wheel's.

From a checkout (or its editable install) `sql/` is read at the top of the
repository, where analysts find it, and the embedded database lives in the
checkout's `.dispatch-ledger/`. A wheel ships `sql/` inside the package
(pyproject.toml maps it to `app/sql`), and its embedded database lives in the
user's data directory, never inside site-packages. DATA_DIR overrides both.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_TOP = Path(__file__).resolve().parent.parent

# The checkout this code runs from, or None when it is an installed wheel.
# A checkout has its pyproject.toml beside app/; site-packages has none.
CHECKOUT: Path | None = _TOP if (_TOP / "pyproject.toml").is_file() else None


def _sql_dir() -> Path:
    if CHECKOUT is not None:
        return CHECKOUT / "sql"
    # Installed unzipped, as pip installs a wheel: a real folder.
    return Path(str(files("app") / "sql"))


SQL_DIR = _sql_dir()


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data unless DATA_DIR says."""
    if CHECKOUT is not None:
        # One place whatever the current directory: a command run from another
        # folder joins the same server.
        return CHECKOUT / ".dispatch-ledger"
    from platformdirs import user_data_path

    return user_data_path("dispatch-ledger")
