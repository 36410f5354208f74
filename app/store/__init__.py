"""PostgreSQL: the connection pool, the named SQL of sql/, rows to states and back,
migrations, the embedded server, operators' tasks (analyst logins, pruning) and the
backlog of what is captured but not applied.

Imports app.spec and app.model (and the settings), nothing that serves or applies.
"""
