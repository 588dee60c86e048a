"""``demo --dask ADDRESS``: a Dask executor for the demo's remote stage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._errors import UsageError

if TYPE_CHECKING:
    from stageflow_otel.distributed.dask import DaskExecutor

CONNECT_TIMEOUT_S = 10


@contextlib.contextmanager
def dask_executor(address: str) -> Iterator[DaskExecutor]:
    """Connect to the scheduler at ``address``, set up the workers, yield a ``DaskExecutor``."""
    try:
        import distributed

        from stageflow_otel.distributed.dask import DaskExecutor, StageflowWorkerPlugin
    except ImportError:
        raise UsageError(
            "--dask needs Dask distributed: pip install 'stageflow-otel[dask]'"
        ) from None
    new_client: Any = distributed.Client  # not annotated
    try:
        client = new_client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(
            f"--dask {address}: cannot connect to a Dask scheduler there ({exc}); start one "
            "with `dask scheduler` and give its address, e.g. tcp://127.0.0.1:8786"
        ) from None
    with client:
        client.register_plugin(StageflowWorkerPlugin())
        with DaskExecutor(client) as executor:
            yield executor
