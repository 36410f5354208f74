"""Events out: endpoints that receive each workflow event as a signed webhook, and the
deliverer that sends them (Standard Webhooks), retries and disables."""
