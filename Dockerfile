# The stageflow-otel demo image used by docker-compose.yml (also its Dask scheduler and
# workers: the dask extra is installed).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install '.[dask]' && useradd --create-home --uid 10001 stageflow

USER stageflow
WORKDIR /home/stageflow
# /metrics must be reachable from Prometheus in the next container.
ENV STAGEFLOW_OTEL_METRICS_ADDR=0.0.0.0
EXPOSE 9464

ENTRYPOINT ["stageflow-otel"]
CMD ["demo", "--otlp-endpoint", "http://otel-collector:4317", "--dask", "tcp://dask-scheduler:8786", "--hold", "--interval", "5"]
