"""What the service shows: the read API and its documents (read_api, readmodel), the
dashboard, /openapi.json, /metrics and the overdue listing.

May import app.pipeline (the applier's state on /readyz) and below; never what
receives callbacks or sends workflows.
"""
