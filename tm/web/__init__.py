"""The dispatcher's web dashboard and Prometheus metrics (``--http``); see docs/dashboard.md."""
