"""Scale-out on a Ray cluster: workers that each load the model once and code whole batches,
and a driver that hands batches out and takes results back in order.

A batch of an exact archive codes to the same bytes wherever it runs (side models start afresh
in each batch), so the archive does not depend on how many workers there are, of what kind or
where. Ray does the placing and restarts a worker that dies (on another node where it must); the
driver then hands the dead worker's batch to it again. `pip install 'llmzip[ray]'`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ClusterError, InvalidOptionError, LlmzipError, WrongModelError

if TYPE_CHECKING:
    from .batches import BatchCoder, ByteProgress, CodedBatch, Job, Plan
    from .container import ChunkEntry

RESTARTS = 3  # times a dead worker is restarted, and a batch retried, before the run fails
REPORT_SECONDS = 0.5  # how often workers report progress and the driver looks


class WorkerDied(ClusterError):
    """A worker process ended (killed, out of memory, node lost) while it held a call."""


@dataclass(frozen=True)
class WorkerSpec:
    """What each worker loads: the model by name, checked against the driver's fingerprint."""

    model: str  # alias, Hugging Face id, directory or .gguf file, as the worker's machine finds it
    fingerprint: bytes
    device: str  # "auto": CUDA where the worker has a GPU


@dataclass
class WorkerFigures:
    """What one worker process did."""

    name: str  # host:pid
    device: str
    threads: int
    load_seconds: float
    batches: int = 0
    input_bytes: int = 0
    seconds: float = 0.0  # coding, model load excluded


class Board:
    """A Ray actor: bytes coded so far per batch in flight, for one map of batches at a time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.coded: dict[int, int] = {}

    def advanced(self, index: int, coded: int) -> None:
        self.coded[index] = coded

    def snapshot(self) -> dict[int, int]:
        return dict(self.coded)


class Worker:
    """A Ray actor holding one loaded model; a restart (after a crash) loads it again."""

    def __init__(self, spec: WorkerSpec, threads: int, board: str) -> None:
        import ray

        from .process import tune_process

        tune_process()  # a process of llmzip's own, before it imports torch
        self.spec, self.threads = spec, threads
        self.board = ray.get_actor(board)  # by name: a handle among the arguments could not restart the actor
        self.coder: BatchCoder | None = None
        self.figures: WorkerFigures | None = None

    def load(self) -> WorkerFigures:
        if self.coder is None:
            import torch

            from .batches import BatchCoder
            from .models import load_model

            started = time.perf_counter()
            torch.set_num_threads(self.threads)
            coder = BatchCoder(load_model(self.spec.model), self.spec.device)
            name = f"{socket.gethostname()}:{os.getpid()}"
            if coder.model.fingerprint != self.spec.fingerprint:
                raise WrongModelError(
                    f"worker {name} loads {self.spec.model!r} with fingerprint {coder.model.fingerprint.hex()}, "
                    f"the driver's has {self.spec.fingerprint.hex()}"
                )
            coder.prepare()
            self.coder = coder
            seconds = time.perf_counter() - started
            self.figures = WorkerFigures(name, str(coder.device), self.threads, seconds)
        assert self.figures is not None
        return self.figures

    def encode(self, index: int, plan: Plan, batch: list[np.ndarray]) -> tuple[CodedBatch, int, WorkerFigures]:
        return self._run(index, lambda coder, on_symbols: coder.encode(plan, batch, on_symbols))

    def decode(
        self, index: int, plan: Plan, stored: list[bytes], entries: list[ChunkEntry]
    ) -> tuple[list[bytes], int, WorkerFigures]:
        return self._run(index, lambda coder, on_symbols: coder.decode(plan, stored, entries, on_symbols))

    def _run(self, index: int, code: Callable[[BatchCoder, Callable], Any]) -> tuple[Any, int, WorkerFigures]:
        """Code one batch, reporting bytes to the board; return the result, its bytes and figures."""
        figures = self.load()
        assert self.coder is not None
        id_nbytes = self.coder.model.tokenizer.id_nbytes
        self.board.advanced.remote(index, 0)  # a retry starts from nothing
        coded, reported = 0, time.perf_counter()

        def on_symbols(symbols: np.ndarray) -> None:
            nonlocal coded, reported
            coded += int(id_nbytes[symbols].sum())
            if time.perf_counter() - reported > REPORT_SECONDS:
                self.board.advanced.remote(index, coded)
                reported = time.perf_counter()

        started = time.perf_counter()
        result = code(self.coder, on_symbols)
        figures.batches += 1
        figures.input_bytes += coded
        figures.seconds += time.perf_counter() - started
        return result, coded, figures


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise InvalidOptionError("workers need Ray: pip install 'llmzip[ray]'") from e
    return ray


# A call each Ray server answers, and what the address must point at for it.
PROBES = {
    "gcs": (
        "/ray.rpc.NodeInfoGcsService/GetClusterId",
        "a Ray GCS (HOST:PORT is the head's --port, by default 6379)",
    ),
    "client": (
        "/ray.rpc.RayletDriver/ClusterInfo",
        "a Ray client server (ray://HOST:PORT is the head's client port, by default 10001)",
    ),
}


def _auth_token() -> str | None:
    """The token Ray's own connection will send: under RAY_AUTH_MODE=token, from RAY_AUTH_TOKEN,
    else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def _probe(address: str) -> None:
    """Fail in seconds, naming the cause, where joining would retry for minutes or time out
    without saying why: nobody answers, something other than Ray answers, or the cluster wants
    a token (token authentication, which Ray is turning on by default)."""
    if address == "auto":
        return
    client = address.startswith("ray://")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InvalidOptionError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from e
    import grpc  # Ray's own dependency

    method, expected = PROBES["client" if client else "gcs"]
    token = _auth_token()
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(b"", timeout=10, metadata=[("authorization", f"Bearer {token}")] if token else None)
        except grpc.RpcError as e:
            code = e.code()  # the call's status; anything else means a Ray server answered
            if code == grpc.StatusCode.UNAUTHENTICATED and token:
                raise ClusterError(f"the Ray cluster at {address} refused this machine's token") from None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise ClusterError(
                    f"the Ray cluster at {address} asks for a token: set RAY_AUTH_MODE=token, "
                    "with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
                ) from None
            if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                raise ClusterError(f"{host}:{port} answers, but is not {expected}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ClusterError(f"the Ray cluster at {address} did not answer in 10 s") from None


JOIN_ATTEMPTS = 3  # a Ray client server's process for this client may die as it starts (ray-project/ray#63202)


def _join(ray: Any, address: str, options: dict[str, Any]) -> None:
    """ray.init at an existing cluster's address, again where Ray's client server lost the process
    it forks for this client (its proxy then answers "Initialization failure from server": a
    gRPC race on fork, Ray issue 63202: 2 of this project's last 5 CI runs)."""
    for attempt in range(1, JOIN_ATTEMPTS + 1):
        try:
            ray.init(address=address, **options)
            return
        except (ConnectionError, RuntimeError) as e:
            if attempt == JOIN_ATTEMPTS or not str(e).startswith("Initialization failure from server"):
                raise ClusterError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from e
            ray.shutdown()


class Cluster:
    """Workers on a Ray cluster: a local one started for the run (`workers`), or an existing one
    joined at `address` (HOST:PORT, ray://HOST:PORT, or auto). Close it to stop the workers."""

    def __init__(self, workers: int | None = None, address: str | None = None, threads: int | None = None) -> None:
        ray = _ray()
        if workers is not None and workers < 1:
            raise InvalidOptionError("workers must be at least 1")
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        started = time.perf_counter()
        if address is None:
            workers = workers or 1
            cpus = os.cpu_count() or 1
            self.threads = threads or max(1, cpus // workers)
            ray.init(address="local", num_cpus=max(cpus, workers * self.threads), include_dashboard=False, **quiet)
        else:
            _probe(address)
            _join(ray, address, quiet)
            self.threads = threads or 1
        resources = ray.cluster_resources()
        self.size = workers or max(1, int(resources.get("CPU", 1)) // self.threads)
        self.gpus = int(resources.get("GPU", 0))
        self.start_seconds = time.perf_counter() - started  # the cluster, up or joined
        self.load_seconds = 0.0  # the workers, started and their model loaded
        self.board_name = f"llmzip-board-{uuid.uuid4().hex}"
        self.board = ray.remote(num_cpus=0)(Board).options(name=self.board_name).remote()
        self.workers: list[Any] = []
        self.spec: WorkerSpec | None = None
        self.figures: dict[str, WorkerFigures] = {}
        self.retries = 0  # batches coded again after their worker died, over all maps

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (and a local cluster); what they were doing is dropped."""
        ray = _ray()
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        ray.shutdown()

    def _start(self, spec: WorkerSpec) -> list[Any]:
        """The workers for `spec`, started (a GPU each where the cluster has some) and loaded."""
        if self.spec == spec:
            return self.workers
        ray = _ray()
        for worker in self.workers:
            ray.kill(worker)
        # Ray restarts a dead worker; the driver, not Ray, submits its batch again, so that it
        # knows every retry (an attempt Ray retried could die before its worker reported anything).
        actor = ray.remote(max_restarts=RESTARTS, max_task_retries=0)(Worker)
        gpus = 0 if spec.device == "cpu" else min(self.gpus, self.size)
        self.workers = [
            actor.options(num_cpus=self.threads, num_gpus=int(k < gpus)).remote(spec, self.threads, self.board_name)
            for k in range(self.size)
        ]
        self.spec = spec
        started = time.perf_counter()
        for figures in self._get([w.load.remote() for w in self.workers]):
            self.figures[figures.name] = figures
        self.load_seconds = time.perf_counter() - started
        return self.workers

    def batches(self, spec: WorkerSpec) -> RayBatches:
        """Batches coded on this cluster's workers, which load `spec`."""
        return RayBatches(self, spec)

    def map(
        self, spec: WorkerSpec, method: str, plan: Plan, jobs: Iterable[tuple], progress: ByteProgress | None
    ) -> Iterator[Any]:
        """Hand jobs to idle workers, at most twice as many results held as there are workers
        (so neither the input nor the output is held whole), and yield results in order."""
        ray = _ray()
        idle = list(self._start(spec))
        ray.get(self.board.reset.remote())
        plan_ref = ray.put(plan)
        running: dict[Any, tuple[int, Any, tuple]] = {}  # result ref -> (job index, worker, job)
        tries: dict[int, int] = {}  # job index -> times its worker died coding it
        finished: dict[int, Any] = {}
        jobs, submitted, emitted = iter(jobs), 0, 0
        done_bytes, shown = 0, 0
        exhausted = False
        while True:
            while idle and not exhausted and len(running) + len(finished) < 2 * len(self.workers):
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                worker = idle.pop()
                running[getattr(worker, method).remote(submitted, plan_ref, *job)] = (submitted, worker, job)
                submitted += 1
            if not running and not finished:
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=REPORT_SECONDS) if running else ([], [])
            for ref in ready:
                index, worker, job = running.pop(ref)
                try:
                    result, coded, figures = self._get(ref)
                except WorkerDied as e:
                    tries[index] = tries.get(index, 0) + 1
                    if tries[index] > RESTARTS:
                        raise ClusterError(f"batch {index} was tried {tries[index]} times; {e}") from e
                    self.retries += 1
                    running[getattr(worker, method).remote(index, plan_ref, *job)] = (index, worker, job)
                    continue
                idle.append(worker)
                finished[index] = result
                done_bytes += coded
                self.figures[figures.name] = figures
            in_flight = ray.get(self.board.snapshot.remote())
            if progress is not None:
                now = done_bytes + sum(n for i, n in in_flight.items() if i >= emitted and i not in finished)
                progress(now - shown)
                shown = now
            while emitted in finished:
                yield finished.pop(emitted)
                emitted += 1

    @staticmethod
    def _get(refs: Any) -> Any:
        """ray.get, with a worker's own error raised as itself and Ray's as one line."""
        ray = _ray()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, LlmzipError):
                raise e.cause from None
            raise ClusterError(f"a worker failed: {type(e.cause).__name__}: {e.cause}") from e
        except ray.exceptions.RayActorError as e:
            raise WorkerDied(f"a worker died: {str(e).splitlines()[0]}") from e


@dataclass(frozen=True)
class RayBatches:
    """Batches coded on a cluster's workers (as batches.LocalBatches codes them in this process)."""

    cluster: Cluster
    spec: WorkerSpec

    def encode(
        self, plan: Plan, batches: Iterable[list[np.ndarray]], progress: ByteProgress | None
    ) -> Iterator[CodedBatch]:
        """Each batch's code, in order."""
        return self.cluster.map(self.spec, "encode", plan, ((batch,) for batch in batches), progress)

    def decode(self, plan: Plan, jobs: Iterable[Job], progress: ByteProgress | None) -> Iterator[list[bytes]]:
        """Each batch's decoded chunks (stored payloads and entries in), in order."""
        return self.cluster.map(self.spec, "decode", plan, jobs, progress)
