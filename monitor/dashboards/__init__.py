"""Grafana dashboards generated from code (`python -m monitor.dashboards.build`)."""
