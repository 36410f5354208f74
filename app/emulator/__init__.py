"""A local stand-in for Vonage (Dispatch and the Messages API's failover) that plays
workflows and calls back as Vonage does, and generate, which makes realistic fake
workflows through the same code as real callbacks.

It may import every package but the commands (app.cli).
"""
