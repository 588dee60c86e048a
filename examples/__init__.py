"""Example pipelines of stageflow-otel (run them with ``stageflow-otel run``)."""
