"""The `dispatch-ledger` command: serve, migrate, apply, rebuild and every operator's task.

The top of the layout: it may import any package. A module per group of
commands, each registering its own on `main` (app/cli/group.py):

    web          serve, migrate
    applier      apply, status
    operations   analyst-role, prune-raw, prune-state, prune-rejects, rebuild, reprocess-rejects
    workflows    send, overdue
    endpoints    endpoints (add, list, remove, rotate-secret, enable, replay), deliver
    stand_in     emulate, generate
"""

from app.cli import applier, endpoints, operations, stand_in, web, workflows
from app.cli.group import main

__all__ = ["applier", "endpoints", "main", "operations", "stand_in", "web", "workflows"]
