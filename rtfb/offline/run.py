"""``rtfb analyze``: per-subject maps of a BIDS cohort, one Dask task per run.

By default a local Dask cluster of worker *processes* (one thread each) is started and closed;
``scheduler="tcp://host:port"`` uses an existing scheduler; ``scheduler="synchronous"`` runs the
same tasks in this process (tests, debugging). Each task is
:func:`rtfb.offline.subject.process_subject`, a pure function of its inputs, so the maps are
identical whichever scheduler runs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import __version__
from .bids import Dataset, load_dataset
from .subject import PIPELINE_NAME, AnalysisConfig, default_seeds, process_subject

logger = logging.getLogger("rtfb.offline")

__all__ = ["SINGLE_THREAD_ENV", "AnalysisError", "analyze"]


SINGLE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                      "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class AnalysisError(RuntimeError):
    """Some runs failed.

    ``failures`` maps each failed run to its error message, ``results`` holds the written
    paths of the others.
    """

    def __init__(self, message: str, failures: dict, results: dict):
        super().__init__(message)
        self.failures = failures
        self.results = results


def _single_threaded_task(*args, **kwargs):
    """:func:`process_subject` on one core (numba kernels and BLAS), for a Dask worker.

    Dask runs one task per worker thread, so each task gets one core; the numba kernels'
    chunking is fixed, hence the maps do not depend on the thread count. (The environment
    variables given to the local cluster come too late for numba when the main module
    imports rtfb, hence the explicit ``set_num_threads``.)
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - optional
            return process_subject(*args, **kwargs)
        with threadpool_limits(1):
            return process_subject(*args, **kwargs)
    finally:
        numba.set_num_threads(previous)


def _connect(address: str, timeout: float):
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - OSError, TimeoutError, ValueError (bad scheme)
        raise ConnectionError(f"cannot connect to the Dask scheduler at {address!r} "
                              f"({type(err).__name__}: {err}).") from None


def _close_quietly(client, cluster) -> None:
    """Close the client, then the local cluster, without the nannies' shutdown chatter.

    Every future has been collected, so the nannies' "Worker process still alive after ...
    seconds, killing" (a worker slow to exit on a loaded machine), heartbeat and
    connection-closed messages during teardown are not news to the user: they are silenced
    in this process, and the local cluster's workers log only critical messages
    (``silence_logs``): a task's error reaches the user through its future, a dead worker
    through ``KilledWorker``.
    """
    names = ("distributed", "distributed.nanny", "distributed.worker", "distributed.core",
             "distributed.scheduler", "distributed.batched", "distributed.comm")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        client.close()
        if cluster is not None:
            cluster.close(timeout=30)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def progress_bar(enabled: bool, total: int | None, description: str = "subjects"):
    """A rich progress bar and its task (a disabled bar when ``enabled`` is False)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not enabled, transient=False)
    return progress, progress.add_task(description, total=total)


def _write_description(pipeline_dir: Path, bids_dir: Path) -> None:
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    path = pipeline_dir / "dataset_description.json"
    path.write_text(json.dumps({
        "Name": "rtfb offline resting-state maps",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "rtfb", "Version": __version__,
                         "Description": "rtfb analyze: real-time preprocessing offline + "
                                        "batch metric kernels"}],
        "SourceDatasets": [{"URL": str(bids_dir.resolve())}],
    }, indent=2) + "\n")


def analyze(bids_dir, out_dir, *, participants=None, config: AnalysisConfig | None = None,
            scheduler: str | None = None, n_workers: int | None = None,
            overwrite: bool = False, progress: bool = True,
            connect_timeout: float = 10.0) -> dict:
    """Compute the maps of every run of a BIDS dataset, one Dask task per run.

    Parameters
    ----------
    bids_dir : str | path-like | rtfb.offline.bids.Dataset
        BIDS root (``sub-*/[ses-*/]func/*_bold.nii.gz`` + sidecars, ``participants.tsv``),
        or a dataset already loaded (and checked) by
        :func:`~rtfb.offline.bids.load_dataset`.
    out_dir : str | path-like
        Derivatives root; maps go to ``out_dir/rtfb/``.
    participants : str | path-like | None
        Participants table (default ``bids_dir/participants.tsv``).
    config : AnalysisConfig | None
        Metric and preprocessing options; seeds default to :func:`default_seeds`.
    scheduler : str | None
        ``None``: start a ``distributed.LocalCluster`` of ``n_workers`` processes (1 thread
        each) and close it at the end; ``"synchronous"``: run in this process without a
        cluster; otherwise the address of a running scheduler (``tcp://host:port``).
    n_workers : int | None
        Workers of the local cluster (default 2).
    overwrite : bool
        Recompute runs whose outputs and ``done`` marker already exist.
    progress : bool
        Show a progress bar over runs.
    connect_timeout : float
        Seconds to wait for a remote scheduler.

    Returns
    -------
    dict
        ``{run prefix (sub-XX_task-...): {key: written path}}``.

    Raises
    ------
    rtfb.offline.bids.BIDSError
        Unusable dataset (see :func:`rtfb.offline.bids.load_dataset`).
    ConnectionError
        The scheduler address is unknown or unreachable (the message names it).
    AnalysisError
        Some runs failed (after all the others finished).
    """
    from dask import delayed

    dataset = (bids_dir if isinstance(bids_dir, Dataset)
               else load_dataset(bids_dir, participants))
    config = AnalysisConfig() if config is None else config
    if config.seeds is None:
        from dataclasses import replace

        config = replace(config, seeds=default_seeds(dataset.root))
    if n_workers is not None and int(n_workers) < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers!r}.")
    out_dir = Path(out_dir)
    _write_description(out_dir / PIPELINE_NAME, dataset.root)
    runs = {run.prefix: run for run in dataset.runs}
    results, failures = {}, {}
    bar, task = progress_bar(progress, len(runs), "subjects (maps, registration to the template)"
                          if config.normalise else "subjects")

    def record(prefix, outcome, error=None):
        if error is None:
            results[prefix] = outcome
        else:
            failures[prefix] = error
            logger.error("%s failed: %s", prefix, error)
        bar.advance(task)

    with bar:
        if scheduler == "synchronous":
            for prefix, run in runs.items():
                job = delayed(process_subject, pure=False)(run.path, run.tr, out_dir, config,
                                                           overwrite=overwrite)
                try:
                    record(prefix, job.compute(scheduler="synchronous"))
                except Exception as err:  # noqa: BLE001 - reported per run
                    record(prefix, None, f"{type(err).__name__}: {err}")
        else:
            from distributed import as_completed

            cluster = None
            if scheduler is None:
                from distributed import Client, LocalCluster

                cluster = LocalCluster(n_workers=int(n_workers or 2), threads_per_worker=1,
                                       processes=True, dashboard_address="127.0.0.1:0",
                                       env=dict(SINGLE_THREAD_ENV),
                                       silence_logs=logging.CRITICAL)
                client = Client(cluster)
            else:
                client = _connect(str(scheduler), connect_timeout)
            try:
                futures = {client.submit(_single_threaded_task, run.path, run.tr, out_dir, config,
                                         overwrite=overwrite, key=f"rtfb-analyze-{prefix}",
                                         pure=False): prefix
                           for prefix, run in runs.items()}
                for future in as_completed(futures):
                    prefix = futures[future]
                    try:
                        record(prefix, future.result())
                    except Exception as err:  # noqa: BLE001 - reported per run
                        record(prefix, None, f"{type(err).__name__}: {err}")
            finally:
                _close_quietly(client, cluster)
    results = {k: results[k] for k in sorted(results)}
    if failures:
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(failures.items()))
        raise AnalysisError(f"{len(failures)} of {len(runs)} runs failed:\n{lines}",
                            failures, results)
    return results
