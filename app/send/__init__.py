"""Workflow definitions: recorded (PUT .../definition), or sent to Vonage through its
API (POST /workflows, dispatch_client) and recorded under the id Vonage returns.

May import app.read (GET /workflows lists overdue ones) and below; never app.receive.
"""
