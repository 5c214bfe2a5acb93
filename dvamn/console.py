"""What a ``dvamn`` command shows on the console, and where everything else goes.

Every command prints its own stages, progress bars (tqdm) and summaries. Log records go to
a log file (``$DVAMN_CACHE/logs/COMMAND-TIME-PID.log``, printed when the command ends);
the console shows only our own warnings and errors, which say what to do. Ray's internal
logs (its driver-side loggers, and the output of its workers, actors and raylets, which
``log_to_driver`` would forward) stay in that file and in Ray's session directory.
``dvamn --verbose`` shows all of it on the console, as Ray does by default.
"""

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from dvamn import storage

# Loggers of Ray that add their own console handlers (ray.data on import, ray on init).
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_state = {"verbose": False, "log_file": None, "ray_logs": None}


class _OursOnConsole(logging.Filter):
    """Without --verbose the console shows our warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state["verbose"]:
            return True
        return record.name.split(".")[0] == "dvamn" and record.levelno >= logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (``session`` swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if _state["verbose"]:
            return super().format(record)
        return f"{record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def session(command: str, verbose: bool) -> Iterator[Path]:
    """Logging for one ``dvamn COMMAND`` run; yields the log file's path.

    Without ``verbose``, when this process's stderr is the real one (a terminal or a pipe,
    not a test's capture), file descriptor 2 itself is pointed at the log file for the
    run: what Ray's C++ core, FFmpeg or ONNX Runtime write there lands in the file, while
    Python's ``sys.stderr`` (our messages, progress bars, tracebacks) keeps the console.
    Everything is restored on exit.
    """
    _state["verbose"] = verbose
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = storage.cache_dir("logs") / f"{command}-{stamp}-{os.getpid()}.log"
    _state["log_file"] = log_path
    _state["ray_logs"] = None
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    to_console = _StderrHandler()
    to_console.addFilter(_OursOnConsole())
    to_console.setFormatter(_ConsoleFormatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(to_file)
    root.addHandler(to_console)
    saved = None
    if not verbose and sys.stderr is sys.__stderr__ and _has_fd(sys.stderr):
        sys.stderr.flush()
        console_fd = os.dup(2)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        saved = (console_fd, sys.stderr)
        sys.stderr = os.fdopen(
            os.dup(console_fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace"
        )
    try:
        yield log_path
    finally:
        root.removeHandler(to_file)
        root.removeHandler(to_console)
        to_file.close()
        root.setLevel(old_level)
        if saved is not None:
            console_fd, original = saved
            sys.stderr.flush()
            sys.stderr.close()
            os.dup2(console_fd, 2)
            os.close(console_fd)
            sys.stderr = original


def _has_fd(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def verbose() -> bool:
    return bool(_state["verbose"])


def log_file() -> Optional[Path]:
    return _state["log_file"]


def route_ray_logs() -> None:
    """Send Ray's driver-side loggers through ours (to the log file; to the console only
    with --verbose). Call after importing Ray and again after Ray Data or Serve start,
    which install console handlers of their own."""
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.DEBUG if _state["verbose"] else logging.INFO)
    if not _state["verbose"]:
        _route_raylet_messages()


def _route_raylet_messages() -> None:
    """The raylet's messages to a driver ("(raylet) WARNING: 10 PYTHON worker processes
    have been started ...") are printed by Ray's error listener to sys.stdout whatever
    ``log_to_driver`` says, and Ray has no setting for them: its printing function is
    replaced by one that logs them (into the log file)."""
    import ray._private.worker as ray_worker

    if getattr(ray_worker.print_to_stdstream, "_dvamn", False):
        return
    ray_log = logging.getLogger("ray.driver_output")

    def log_instead(data, ignore_prefix: bool) -> None:  # noqa: ARG001 - Ray's signature
        for line in data.get("lines", []):
            ray_log.info("(%s) %s", data.get("pid", "?"), line)

    log_instead._dvamn = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = log_instead


def progress(iterable: Optional[Iterable] = None, **kwargs):
    """A tqdm progress bar on stderr, the same everywhere (``total``, ``desc``, ``unit``)."""
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    # On a pipe (CI, a test) a bar would print an update per refresh: show only the end.
    kwargs.setdefault("disable", None if sys.stderr.isatty() else True)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def say(message: str) -> None:
    """A line of a command's own output on stdout (above any progress bar), flushed: a
    pipe's reader (a test, a wrapper script) sees it when it is printed."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


@dataclass
class StageTime:
    """How long a ``stage`` took: set when the stage ends."""

    seconds: float = 0.0


@contextlib.contextmanager
def stage(title: str) -> Iterator[StageTime]:
    """One stage of a command: its title, then how long it took. Yields a ``StageTime``
    (filled in at the end) for a command that reports its stages' timings."""
    say(f"\n== {title}")
    took = StageTime()
    started = time.perf_counter()
    yield took
    took.seconds = time.perf_counter() - started
    say(f"   done in {took.seconds:.1f} s")


def materialize(dataset, total: int, desc: str, unit: str):
    """``dataset.materialize()`` with our progress bar over its rows, moved as each block
    completes (Ray Data's own bars are off without --verbose: ``ray_setup.ensure_ray``).

    The result is what ``materialize`` returns: a MaterializedDataset of the same blocks,
    whose ``stats()`` is this execution's (the stats are a job's report, and tests read
    them). It is built the way Ray Data 2.60's ``materialize`` builds it (an InputData
    plan over the blocks, which it does not own), from the streamed bundles.
    """
    from ray.data._internal.execution.interfaces import RefBundle
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import InputData
    from ray.data.dataset import MaterializedDataset

    bundles = []
    with progress(total=total, desc=desc, unit=unit) as bar:
        for bundle in dataset.iter_internal_ref_bundles():
            bundles.append(
                RefBundle(bundle.blocks, bundle.schema, owns_blocks=False, slices=bundle.slices)
            )
            bar.update(bundle.num_rows() or 0)
    context = dataset.context
    output = MaterializedDataset(
        LogicalPlan(InputData(input_data=bundles), context), context, dataset._raw_stats()
    )
    output._execute()  # as materialize does: the cache of the InputData source
    return output


def remember_ray_session() -> None:
    """Note where this Ray instance writes its workers' logs (called once Ray is up)."""
    try:
        from ray._private.worker import global_worker  # no public API names this folder

        _state["ray_logs"] = global_worker.node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - only a hint for the last line
        _state["ray_logs"] = "the session folder of Ray's temp dir (/tmp/ray/session_latest/logs)"


def where_logs_went() -> Optional[str]:
    """The line a command that ran Ray prints last: where its logs and Ray's are."""
    if not _state["ray_logs"] or not _state["log_file"]:
        return None
    hint = "" if _state["verbose"] else " (dvamn --verbose shows them here)"
    return f"logs: {_state['log_file']}; Ray's workers: {_state['ray_logs']}{hint}"
