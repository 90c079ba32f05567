"""Running on a Dask cluster: the connection, customer partitions, offline decisions on workers.

Everything here imports ``dask`` / ``distributed`` lazily (``pip install retryopt[cluster]``), so
the default install never needs them. Point-in-time features and decisions depend only on one
customer's own history (the card key is scoped by the customer, see ``features/history.py``),
so the attempts are shuffled by ``customer_id``: every customer's rows land in one partition and
each partition is validated and processed on a worker as one process would process it alone.

Addresses (``--dask``): ``local`` or ``local:N`` starts a :class:`distributed.LocalCluster`
with N worker processes (default 2) of one thread each; anything else is a scheduler address
(``tcp://host:8786``). Data paths may be local files, folders or globs of a partitioned Parquet
dataset, or any fsspec URL the workers can read (``s3://bucket/attempts/``); the workers read
them, so they must be reachable from every worker (a shared file system or an object store).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from retryopt.features import contract as c
from retryopt.features.validation import ContractError, validate_attempts
from retryopt.serving.offline import (
    OfflineInputError,
    decide_attempts,
    decisions_frame,
    split_now_column,
)
from retryopt.serving.service import DecisionService, service_for
from retryopt.serving.settings import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import dask.dataframe as dd
    from distributed import Client

__all__ = [
    "ClusterError",
    "connect",
    "decide_on_cluster",
    "parse_address",
    "partition_by_customer",
    "read_attempts",
    "worker_count",
]

LOCAL: str = "local"
DEFAULT_LOCAL_WORKERS = 2


class ClusterError(ValueError):
    """Dask is missing, the address is malformed or the scheduler cannot be reached."""


def parse_address(address: str) -> tuple[str, int | None]:
    """``("local", n_workers)`` for ``local[:N]``, else ``(scheduler address, None)``.

    Raises
    ------
    ClusterError
        For an empty address or ``local:N`` with N not a positive integer.
    """
    text = address.strip()
    if not text:
        raise ClusterError("--dask: empty address (give local, local:N or tcp://host:port)")
    if text == LOCAL:
        return LOCAL, DEFAULT_LOCAL_WORKERS
    if text.startswith(f"{LOCAL}:"):
        count = text[len(LOCAL) + 1 :]
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"--dask: local:N needs a positive worker count, got {count!r}")
        return LOCAL, int(count)
    return text, None


def _require_dask() -> None:
    try:
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ClusterError(f"--dask needs Dask: pip install 'retryopt[cluster]' ({exc})") from None


@contextmanager
def connect(address: str, *, memory_limit: str | None = None) -> Iterator[Client]:
    """A Dask client for ``address`` (``local[:N]`` starts and stops a local cluster).

    Parameters
    ----------
    address
        ``local``, ``local:N`` or a scheduler address.
    memory_limit
        Per-worker memory limit of a local cluster (``"2GiB"``); default: Dask's share of RAM.
    """
    where, workers = parse_address(address)
    _require_dask()
    from distributed import Client, LocalCluster

    if workers is not None:
        # Passive OpenMP waiting in the worker processes (LightGBM), as ``retryopt train`` does.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=memory_limit or "auto",
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(where, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"--dask: cannot reach the scheduler at {where!r}: {exc}") from None
    with client:
        yield client


def read_attempts(path: str | os.PathLike[str]) -> dd.DataFrame:
    """A raw attempts table as a Dask frame: a Parquet file, folder or glob, or CSV file(s).

    CSV is read as text (as :func:`features.io.read_table` does); validation happens per
    partition after :func:`partition_by_customer`.
    """
    _require_dask()
    import dask.dataframe as dd

    text = os.fspath(path)
    lowered = text.lower()
    try:
        if lowered.endswith((".csv", ".csv.gz")):
            frame = dd.read_csv(text, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = dd.read_parquet(text)
    except Exception as exc:  # dask wraps the reader's error; name the path and its cause
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        cause = lines[-1].removeprefix("Original Message: ")
        raise ClusterError(
            f"--data {text}: cannot read it ({type(exc).__name__}: {cause})"
        ) from None
    if frame.npartitions == 0 or len(frame.columns) == 0:
        raise ClusterError(f"--data {text}: no data found there")
    return frame


def partition_by_customer(
    frame: dd.DataFrame, *, partitions: int | None = None, workers: int = 1
) -> dd.DataFrame:
    """``frame`` shuffled so that each customer's rows are in exactly one partition.

    ``partitions`` defaults to the input's number of partitions, and at least two per worker
    (a single input file still spreads over the workers).
    """
    if c.CUSTOMER_ID not in frame.columns:
        raise OfflineInputError(f"missing required column {c.CUSTOMER_ID!r}")
    count = partitions or max(1, frame.npartitions, 2 * workers)
    return frame.shuffle(on=c.CUSTOMER_ID, npartitions=count)


def worker_count(client: Client) -> int:
    """The number of workers connected to the scheduler."""
    return len(client.scheduler_info().get("workers", {}))


def validated_partition(raw: pd.DataFrame) -> pd.DataFrame:
    """One customer partition validated against the contract (strict).

    Raises
    ------
    OfflineInputError
        With the validation report (row numbers count within the partition) when it breaks
        the contract; a plain ``ValueError`` travels back from the workers unchanged.
    """
    try:
        return validate_attempts(raw.reset_index(drop=True)).clean
    except ContractError as exc:
        raise OfflineInputError(
            f"the attempts break the data contract (rows within a customer partition):\n"
            f"{exc.report.format()}"
        ) from None


@functools.lru_cache(maxsize=4)
def _worker_service(model: str | None, policy: str, settings: Settings) -> DecisionService:
    """One decision service per worker process and model (the bundle is loaded once)."""
    return service_for(model, policy=policy, settings=settings)  # type: ignore[arg-type]


def _decide_partition(
    raw: pd.DataFrame,
    *,
    model: str | None,
    policy: str,
    settings: Settings,
    now: datetime,
    constraints: Mapping[str, Any] | None,
) -> pd.DataFrame:
    if raw.empty:
        return decide_attempts_meta()
    rest, nows = split_now_column(raw)
    attempts = validated_partition(rest)
    service = _worker_service(model, policy, settings)
    return decide_attempts(attempts, service=service, nows=nows, now=now, constraints=constraints)


def decide_attempts_meta() -> pd.DataFrame:
    """An empty decisions table with the output's dtypes (Dask's ``meta``)."""
    return decisions_frame([], [])


def decide_on_cluster(
    client: Client,
    data: str | os.PathLike[str],
    *,
    model: str | None,
    now: datetime,
    policy: str = "model",
    settings: Settings,
    constraints: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Offline decisions (:func:`serving.offline.decide_attempts`) on the cluster's workers.

    The table is partitioned by customer; each worker validates its partitions and decides
    them with its own :class:`DecisionService` for ``model`` (a bundle path every worker can
    read, or a registry name). The decisions (one row per charge) are gathered on the client,
    ordered by customer then charge, as one process orders them.
    """
    frame = partition_by_customer(read_attempts(data), workers=worker_count(client))
    decided = frame.map_partitions(
        _decide_partition,
        model=model,
        policy=policy,
        settings=settings,
        now=now,
        constraints=None if constraints is None else dict(constraints),
        meta=decide_attempts_meta(),
    )
    out: pd.DataFrame = client.compute(decided).result()
    return out.sort_values(["customer_id", "charge_id"], kind="stable").reset_index(drop=True)
