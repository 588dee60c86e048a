"""Checks of the ops bundle: collector, Prometheus, compose, dashboards."""
