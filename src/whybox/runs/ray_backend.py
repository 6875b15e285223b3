"""Run a job's units as Ray tasks (the ``ray`` extra).

Each unit (one shard under one method) is one task. The inputs and the model (or a factory that builds it in the
worker) go through the object store once; the driver alone writes the run store, committing each unit as its
task returns, so the store's promises (atomic units, resume) hold unchanged. Shards are the job's fixed shards,
disjoint and covering the dataset; a task runs :func:`whybox.runs.job.execute_unit`, the same code as the local
backend, so the rows and arrays are identical. A task whose worker dies is retried by Ray (``max_retries``);
a unit is committed at most once, when its first result arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from whybox.errors import InvalidParameterError, MissingExtraError
from whybox.models.adapter import ModelAdapter
from whybox.runs.job import Job, Unit, execute_unit, unit_data_options
from whybox.runs.store import UnitResult

__all__ = ["MAX_RETRIES", "run_units"]

#: How often a unit is retried when its worker process dies (a lost node, an out-of-memory kill).
MAX_RETRIES = 3

#: A callable run in the worker before each unit, for instrumentation and fault-injection tests; ``None``.
BeforeUnit = Callable[[Unit], None]


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError(
            "backend='ray' needs Ray: pip install 'whybox[ray]' (or pick backend='local')."
        ) from exc
    return ray


def _init(ray: Any, address: str | None) -> bool:
    """Connect to ``address`` or start a local cluster; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    return True


def _task(
    model_or_factory: Any,
    x: torch.Tensor,
    unit: Unit,
    job: Job,
    target: torch.Tensor,
    labels: torch.Tensor | None,
    before: BeforeUnit | None,
    data_options: Any = None,
) -> UnitResult:
    if before is not None:
        before(unit)
    model = model_or_factory
    if not isinstance(model, (ModelAdapter, torch.nn.Module)) and callable(model) and not hasattr(model, "predict"):
        model = model()
        if hasattr(model, "module") and not isinstance(model, torch.nn.Module):  # a LoadedModel from the loaders
            model = model.module
    idx = torch.tensor(unit.indices)
    return execute_unit(
        model,
        x[idx],
        unit,
        job,
        target[idx],
        None if labels is None else labels[idx],
        data_options=unit_data_options(data_options, unit, x.shape[0], job),
    )


def run_units(
    units: Sequence[Unit],
    job: Job,
    model_or_factory: Any,
    x: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor | None,
    on_result: Callable[[UnitResult], None],
    over_budget: Callable[[], bool],
    *,
    address: str | None = None,
    before_unit: BeforeUnit | None = None,
    max_in_flight: int | None = None,
    data_options: Any = None,
) -> bool:
    """Run ``units`` on Ray, calling ``on_result`` (in this process) as each finishes.

    Parameters
    ----------
    units
        The units still to compute.
    model_or_factory
        The model (shipped once through the object store) or a picklable zero-argument callable building it.
    on_result
        Commits one result; called in this process, in completion order.
    over_budget
        Polled before each submission: once true, nothing more is submitted, queued tasks are cancelled and
        the running ones finish and are committed.
    address
        The Ray cluster (``None``: a local cluster over this machine's cores, shut down at the end).
    before_unit
        Run in the worker before each unit (instrumentation, fault-injection tests).
    max_in_flight
        Tasks submitted at once (default: twice the cluster's CPUs).
    data_options
        Explainer options from the data over the whole dataset (see :func:`whybox.runs.job.run_job`), shipped once
        and cut to each unit's samples in the worker.

    Returns
    -------
    bool
        True when the budget stopped the run before every unit was submitted.
    """
    ray = _ray()
    started = _init(ray, address)
    try:
        alive = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        if alive and job.threads > max(alive):  # no node could run a task: Ray would wait for one forever
            raise InvalidParameterError(
                f"threads={job.threads} asks each task for {job.threads} CPUs on one node, but the Ray cluster's "
                f"largest node has {int(max(alive))}: no task could start. Use threads <= {int(max(alive))} "
                "(Job(threads=...))."
            )
        remote = ray.remote(num_cpus=job.threads, max_retries=MAX_RETRIES, retry_exceptions=False)(_task)
        try:
            model_ref = ray.put(model_or_factory)
        except TypeError as exc:  # Ray's "Could not serialize" for a model pickle cannot carry
            raise InvalidParameterError(
                f"the model cannot be shipped to Ray's workers ({str(exc).splitlines()[0]}); pass "
                "model_factory= (a picklable function that builds the model in each worker) to run_job."
            ) from exc
        x_ref = ray.put(x)
        t_ref = ray.put(target)
        l_ref = ray.put(labels)
        d_ref = ray.put(data_options)
        cap = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, Unit] = {}
        queue = list(units)
        stopped = False
        while queue or pending:
            while queue and len(pending) < cap:
                if over_budget():
                    stopped = True
                    queue.clear()
                    break
                unit = queue.pop(0)
                ref = remote.remote(model_ref, x_ref, unit, job, t_ref, l_ref, before_unit, d_ref)
                pending[ref] = unit
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                on_result(ray.get(ref))
        return stopped
    finally:
        if started:
            ray.shutdown()
