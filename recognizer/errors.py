"""Known user errors end every console script with a clean message and a documented exit code.

A data file that is missing, an audit that fails, a config value out of range, a run that diverged
or a file that is not a checkpoint is not a bug: the message names the file or sample and the fix,
and the Python traceback around it (Hydra's "Error executing job" block) is noise. Each kind has
its own exit code, so a job script can tell them apart:

====  ===========================================================================================
code  meaning
====  ===========================================================================================
0     success (also a preempted run: ``trainer.preempt_exit_code``, 0 by default)
1     an unexpected error (a bug): the traceback is printed; ``recognizer-doctor``: a blocking verdict
2     usage or configuration: a bad argument, override or config value
3     data: an input file or folder missing, unreadable or malformed
4     audit: samples break the CTC contract or the alphabet (``stability.audit_policy=error``)
5     non-finite: training diverged (``stability.nonfinite_policy``, its skip or rollback limits)
6     checkpoint: not a ``recognizer-train`` checkpoint, refused (it holds more than plain data), missing,
      or not resumable by this run; a run directory in use or holding another run
7     file system: a file or folder cannot be written (permissions, read-only, full disk, a file where a
      folder should be)
====  ===========================================================================================

``HYDRA_FULL_ERROR=1`` shows the traceback instead, for every console script (Hydra's own switch).
Only errors this package raises on purpose are known: a ``ValueError`` or ``OSError`` raised inside
``torch`` or another library is unexpected and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

from hydra.errors import HydraException, InstantiationException
from omegaconf.errors import OmegaConfBaseException

from recognizer.alphabet import UnknownSymbolError
from recognizer.checkpoint import CheckpointError, CheckpointNotFoundError
from recognizer.ctc import FeasibilityError, LabelError
from recognizer.data.base import DataError
from recognizer.stability.audit import AuditError
from recognizer.stability.guard import NonFiniteStepError
from recognizer.sweeps import in_multirun

log = logging.getLogger(__name__)

#: Exit code and title per kind of known error (the table of the module docstring).
EXIT_CODES = {"config": 2, "data": 3, "audit": 4, "nonfinite": 5, "checkpoint": 6, "io": 7}
TITLES = {
    "config": "configuration error",
    "data": "data error",
    "audit": "audit failed",
    "nonfinite": "training diverged",
    "checkpoint": "checkpoint error",
    "io": "file system error",
}
#: ``OSError`` numbers that mean "cannot write here", whoever raised them (Hydra creating the run
#: directory, torch.save, the loggers): the user's disk, not a bug.
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR})
DEBUG_SWITCH = "HYDRA_FULL_ERROR"
T = TypeVar("T")


class UserExit(SystemExit):
    """Ends a console script with ``code`` after the message was printed.

    ``str()`` is the message's first line, ``prog: error: ...`` (``SystemExit(code)`` alone would
    read as the number), so callers and tests that catch it still see what went wrong.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def full_error() -> bool:
    """True when the user asked for tracebacks (``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get(DEBUG_SWITCH) == "1"


def classify(error: BaseException) -> str | None:
    """The kind of a known user error (a key of :data:`EXIT_CODES`), or None for an unexpected one."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__  # a constructor's own error, wrapped by hydra.utils.instantiate
    if isinstance(error, NonFiniteStepError):
        return "nonfinite"
    if isinstance(error, (CheckpointError, CheckpointNotFoundError)):
        return "checkpoint"
    if isinstance(error, (AuditError, UnknownSymbolError, LabelError, FeasibilityError)):
        return "audit"
    if isinstance(error, DataError):
        return "data"
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return "io"
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        return "config"  # an unknown override, a missing config group option, a `???` value left unset
    if not raised_here(error):
        return None
    if isinstance(error, OSError):  # FileNotFoundError of an input this package checked
        return "data"
    if isinstance(error, ValueError):
        return "config"
    return None


def raised_here(error: BaseException) -> bool:
    """True when ``error`` was raised by this package's own code (its message is meant for users)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == "recognizer" or module.startswith("recognizer.")


def message_block(prog: str, kind: str, error: BaseException) -> str:
    """``prog: error: <message>`` (continuation lines indented), then the kind and the exit code."""
    text = str(error).strip()
    if kind == "io" and isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        text = (
            f"{where}{error.strerror.lower()}. Check the folder's permissions and free space (df -h), or write "
            "elsewhere (hydra.run.dir=..., --out-dir ...); files already written are left as they were"
        )
    if isinstance(error, HydraException) and isinstance(error.__cause__, OmegaConfBaseException):
        text += f"\n{error.__cause__}"  # e.g. which key is not in the config (Hydra prints it too)
    lines = text.splitlines() or [type(error).__name__]
    text = "\n".join([f"{prog}: error: {lines[0]}", *(f"  {line}" for line in lines[1:])])
    hint = f"({TITLES[kind]}, exit code {EXIT_CODES[kind]}; {DEBUG_SWITCH}=1 shows the traceback)"
    return f"{text}\n{hint}\n"


def fail(prog: str, kind: str, error: BaseException) -> UserExit:
    """Print the message block to stderr, record it in the run's log file, return the exit to raise."""
    block = message_block(prog, kind, error)
    sys.stderr.write(block)
    sys.stderr.flush()
    if not in_multirun():  # in a sweep the open log may be another job's (Hydra names the failed job above)
        record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "%s", (block.rstrip(),), None)
        for handler in logging.getLogger().handlers:  # train.log (the console already has the block)
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
    return UserExit(EXIT_CODES[kind], f"{prog}: error: {error}")


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn known user errors raised inside into :func:`fail` (unless ``HYDRA_FULL_ERROR=1`` on entry)."""
    debug = full_error()
    try:
        yield
    except Exception as error:
        kind = None if debug else classify(error)
        if kind is None:
            raise
        raise fail(prog, kind, error) from None


def run_hydra_main(prog: str, main: Callable[[], T]) -> T:
    """Run a ``@hydra.main`` function so that known user errors end as :func:`fail` does.

    Hydra prints a job's exception itself (with a trimmed traceback) unless ``HYDRA_FULL_ERROR=1``;
    with that set while the job runs, the exception reaches :func:`user_errors` here instead, also
    in a ``-m`` sweep (after the job that raised). A user who set it keeps Hydra's full traceback.
    """
    if full_error():
        return main()
    with user_errors(prog):
        os.environ[DEBUG_SWITCH] = "1"
        try:
            return main()
        finally:
            os.environ.pop(DEBUG_SWITCH, None)  # it was unset or not "1": unset is what Hydra reads alike
