"""`python -m app.cli`: the `dispatch-ledger` command."""

from app.cli import main

main()
