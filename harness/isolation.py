"""Run cases x backends in worker processes, so a crash costs only its own row.

A kernel can kill its process (segfault, ``abort()``), poison the CUDA context for everything after
it (an illegal memory access), or hang. Each worker process (one per GPU where there are several)
takes a case and its backends, makes the inputs and the reference once, and streams back a message
before and after each row. The parent watches: a worker that dies or overruns the per-row timeout
is killed, its row becomes an ``error`` with a one-line cause (``worker died: signal 11
(SIGSEGV)``, ``timeout after 600 s``), a fresh worker is started, and the case's remaining
backends go on there. A worker whose row ended in a CUDA error that poisons the context exits
after reporting it, so the next row gets a clean process too.

Workers start with ``spawn`` (safe with CUDA); they find backends by name through the registry
(the entry points, and the fault zoo for ``zoo:`` names). Messages go back over a pipe written
synchronously (``Connection.send``), not a ``multiprocessing.Queue`` whose feeder thread may still
hold the last messages when the process dies: a row that finished is never lost to the crash of
the next one, nor the crash blamed on it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.cases import Case
from harness.results import ResultRow, Status

# CUDA errors after which the context cannot be trusted (the CUDA runtime calls them "sticky")
STICKY_CUDA = re.compile(r"illegal memory access|illegal instruction|misaligned address|device-side assert|"
                         r"unspecified launch failure|an illegal|CUDA error: (?:launch failure|hardware)", re.I)


@dataclass
class Task:
    case: Case
    backends: list[str]
    device: str
    diagnose: bool = False
    heatmap_dir: str | None = None
    attempt: int = 0      # how many workers died on this case before any of these backends started
    repeat: int | None = None  # runs per row for the determinism check (None: the case's)
    rules: tuple = ("moeacc",)  # compare rules recorded (the first decides)


def _worker_main(inbox, outbox, gpu: int | None, errlog: str | None = None) -> None:
    """Worker loop: run tasks; report ``("start", case, backend)``, ``("row", ResultRow)``, ``("done",)``.
    Its standard error (fd 2: Python's, the dynamic loader's, a library's) goes to ``errlog``, which the
    parent copies to its own and reads the cause of a death from."""
    if errlog is not None:
        fd = os.open(errlog, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from harness.backends.registry import select_backends
    from harness.device import device_info
    from harness.runner import run_case
    parent = os.getppid()
    while True:
        try:
            task: Task | None = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent was killed: do not linger
                return
            continue
        if task is None:
            return
        kind = device_info(task.device)["kind"]
        backends = [b for n in task.backends for b in select_backends(n)[:1]]
        poisoned = []

        def on_start(case, backend):
            sys.stderr.flush()   # where this row's standard error starts in the worker's log
            outbox.send(("start", case.name, backend.name, os.fstat(2).st_size if errlog is not None else 0))

        def on_row(row):
            outbox.send(("row", row))
            if row.status is Status.ERROR and STICKY_CUDA.search(row.message):
                poisoned.append(row.message)

        run_case(task.case, backends, task.device, kind, on_row, task.diagnose, task.heatmap_dir,
                 on_start=on_start, stop=lambda: bool(poisoned), repeat=task.repeat, rules=task.rules)
        outbox.send(("done",))
        if poisoned:
            return  # exit: the CUDA context is not to be trusted after a sticky error


def death_cause(exitcode: int | None, last_err: str = "") -> str:
    """One line: how the worker ended, and the last line it wrote to standard error while the row ran
    (``worker exited with code 127: ...: symbol lookup error: fused_moe_90.so: undefined symbol: cu...``)."""
    if exitcode is None:
        why = "worker died"
    elif exitcode < 0:
        try:
            why = f"worker died: signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            why = f"worker died: signal {-exitcode}"
    else:
        why = f"worker exited with code {exitcode}"
    return f"{why}: {' '.join(last_err.split())[:300]}" if last_err else why


@dataclass
class Worker:
    gpu: int | None
    ctx: object
    proc: object = None
    inbox: object = None
    outbox: object = None
    restarts: int = 0
    errlog: str | None = None     # the worker's standard error, copied to ours as it comes
    err_at: int = 0               # how much of it has been copied
    row_at: int = 0               # where the running row's part of it starts

    def start(self) -> None:
        self.inbox = self.ctx.Queue()
        self.outbox, writer = self.ctx.Pipe(duplex=False)
        fd, self.errlog = tempfile.mkstemp(prefix="moeacc-worker-", suffix=".err")
        os.close(fd)
        self.err_at = self.row_at = 0
        self.proc = self.ctx.Process(target=_worker_main, args=(self.inbox, writer, self.gpu, self.errlog), daemon=True)
        self.proc.start()
        writer.close()  # the worker holds the only writer: its death reads as end of file here

    def _read(self, start: int) -> bytes:
        try:
            with open(self.errlog, "rb") as f:
                f.seek(start)
                return f.read()
        except (OSError, TypeError):
            return b""

    def copy_stderr(self) -> None:
        """Copy what the worker wrote to standard error since the last call to ours."""
        new = self._read(self.err_at)
        if new:
            self.err_at += len(new)
            sys.stderr.write(new.decode(errors="replace"))
            sys.stderr.flush()

    def row_stderr(self) -> str:
        """The last non-empty line the worker wrote to standard error since the running row started."""
        lines = [ln for ln in self._read(self.row_at).decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""

    def drop_stderr(self) -> None:
        self.copy_stderr()
        if self.errlog is not None:
            try:
                os.unlink(self.errlog)
            except OSError:
                pass
            self.errlog = None

    def receive(self, timeout: float):
        """The worker's next message, or None (none within ``timeout``, or the worker is gone)."""
        try:
            return self.outbox.recv() if self.outbox.poll(timeout) else None
        except Exception:  # end of file, or a message cut short by the death: the caller sees the dead process
            time.sleep(timeout)
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(timeout=30)
        self.drop_stderr()

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.inbox.put(None)
            self.proc.join(timeout=30)
        self.kill()


@dataclass
class _Running:
    task: Task
    pending: list[str]                 # backends not yet reported
    current: str | None = None
    started: float = field(default_factory=time.monotonic)
    started_any: bool = False          # has any backend of this task started in this worker?


def _crash_row(task: Task, backend: str, message: str, new_row: Callable) -> ResultRow:
    row = new_row(backend, task.case)
    row.status, row.message, row.failure = Status.ERROR, message, "crash"
    return row


def _requeue(run: "_Running", todo: list[Task], emit, new_row, cause: str, started_any: bool) -> None:
    """Give the case's unreported backends to a fresh worker; a case whose worker keeps dying
    before it starts a backend is not retried for ever."""
    if not run.pending:
        return
    attempt = 0 if started_any else run.task.attempt + 1
    if attempt >= 2:
        for b in run.pending:
            emit(_crash_row(run.task, b, f"{cause} (twice, before this backend started)", new_row))
        return
    t = run.task
    todo.insert(0, Task(t.case, list(run.pending), t.device, t.diagnose, t.heatmap_dir, attempt, t.repeat, t.rules))


class Pool:
    """Worker processes (one per entry of ``gpus``) kept alive across calls of :meth:`run`.
    ``new_row(backend_name, case)`` makes the row of a backend that never reported."""

    def __init__(self, new_row: Callable[[str, Case], ResultRow], timeout: float | None = 600.0,
                 gpus: list[int | None] = (None,)):
        ctx = mp.get_context("spawn")
        self.workers = [Worker(g, ctx) for g in gpus]
        self.new_row, self.timeout = new_row, timeout

    def __enter__(self) -> "Pool":
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()

    def run(self, tasks: list[Task], on_row: Callable[[ResultRow], None]) -> list[ResultRow]:
        """Run every task; return the rows in the order they finished (each also given to ``on_row``)."""
        todo, rows, busy = list(tasks), [], {}
        emit = lambda r: (rows.append(r), on_row(r))  # noqa: E731
        while todo or busy:
            for i, w in enumerate(self.workers):
                if i not in busy and todo:
                    t = todo.pop(0)
                    w.inbox.put(t)
                    busy[i] = _Running(t, list(t.backends))
            for i in list(busy):
                if _poll(self.workers[i], busy[i], emit, self.new_row, self.timeout, todo):
                    del busy[i]
        return rows


def run_isolated(tasks: list[Task], on_row: Callable[[ResultRow], None], new_row: Callable[[str, Case], ResultRow],
                 timeout: float | None = 600.0, gpus: list[int | None] = (None,)) -> list[ResultRow]:
    """Run every task in a fresh pool of worker processes."""
    with Pool(new_row, timeout, gpus) as pool:
        return pool.run(tasks, on_row)


def _poll(w: Worker, run: _Running, emit, new_row, timeout, todo) -> bool:
    """Drain one worker's messages; handle death and timeouts. True when its task is finished."""
    msg = w.receive(0.05)
    w.copy_stderr()
    if msg is not None:
        if msg[0] == "start":
            run.current, run.started, run.started_any = msg[2], time.monotonic(), True
            w.row_at = msg[3]
        elif msg[0] == "row":
            row = msg[1]
            row.attempt = {"worker_pid": w.proc.pid, "restarts": w.restarts}
            if row.backend in run.pending:
                run.pending.remove(row.backend)
            run.current = None
            emit(row)
        elif msg[0] == "done":
            if run.pending:  # the worker stopped early (a poisoned CUDA context) and exits
                w.proc.join(timeout=30)
                _restart(w)
                _requeue(run, todo, emit, new_row, "worker restarted after a CUDA error", True)
            return True
        return False
    overran = timeout and run.current is not None and time.monotonic() - run.started > timeout
    if not overran and w.proc.is_alive():
        return False
    last_err = "" if run.current is None else w.row_stderr()
    w.kill()
    cause = f"timeout after {timeout:g} s" if overran else death_cause(w.proc.exitcode, last_err)
    if run.current is not None:
        row = _crash_row(run.task, run.current, cause, new_row)
        row.attempt = {"worker_pid": w.proc.pid, "restarts": w.restarts, "exitcode": w.proc.exitcode}
        emit(row)
        run.pending.remove(run.current)
    _restart(w)
    _requeue(run, todo, emit, new_row, cause, run.started_any)
    return True


def _restart(w: Worker) -> None:
    w.kill()
    w.restarts += 1
    w.start()
