"""One run, one directory: a lock against concurrent runs, no fresh run over another run's checkpoints,
and a resume that is refused before anything is written when the config changed what is trained.

``recognizer-train`` calls :func:`claim` first. Then:

* a second process on the same directory is refused while the first is alive (``.lock`` holds its pid;
  a lock left by a process that died is taken over, with a log line);
* a run without ``trainer.resume`` into a directory that holds checkpoints is refused, unless
  ``trainer.overwrite=true`` moves the old run's files into ``previous/<time>/`` first;
* a resume compares the checkpoint's config with this one (:func:`training_changes`) and refuses any
  difference in model, data, optimizer, scheduler, stability or trainer settings that changes the
  training, unless named in ``trainer.resume_allow``. Hydra has already written this run's config into
  ``.hydra/`` by then: a refused resume puts back the files of the run that is resumed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recognizer.checkpoint import CheckpointError

log = logging.getLogger(__name__)

LOCK = ".lock"
HYDRA_DIR = ".hydra"
ACCEPTED = "accepted"  # .hydra/accepted/: the config files of the run this directory holds
#: What a run writes into its directory; ``trainer.overwrite=true`` moves these aside.
RUN_FILES = ("checkpoints", "metrics.jsonl", "metrics.json", "audit.json", "nonfinite", "alignments", "wandb-run-id")

#: Settings that never change what is trained: a resume may change them freely. Everything else under
#: :data:`COMPARED` must match the checkpoint's run unless ``trainer.resume_allow`` names it.
#: ``trainer.max_epochs`` is here because extending a run is the common case: the schedule is rebuilt for
#: the new length and read at the current step, so the LR moves to where the new plan has it (a cosine
#: is not stretched from here on; the "LR schedule" log line gives the new end).
OPERATIONAL = frozenset(
    {
        *("trainer.max_epochs", "trainer.max_steps", "trainer.early_stopping_patience", "trainer.progress_bar"),
        *("trainer.log_every_n_steps", "trainer.num_threads", "trainer.resume", "trainer.resume_allow"),
        *("trainer.init_from", "trainer.overwrite", "trainer.checkpoint_every_n_steps", "trainer.preempt_exit_code"),
        *("trainer.alignment_samples", "trainer.dist_timeout_s", "trainer.device", "trainer.compile"),
        *("trainer.malloc", "trainer.malloc_mmap_threshold"),  # the latter: its name before 2026-12-07
        *("data.num_workers", "data.pin_memory", "data.persistent_workers", "data.cache", "data.cache_dir"),
        *("stability.save_nonfinite", "stability.max_nonfinite_files", "stability.localize"),
        *("stability.grad_norm_every_step", "stability.detect_anomaly", "stability.scan_inputs"),
    }
)
COMPARED = ("seed", "model", "data", "optimizer", "scheduler", "stability", "trainer")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are values)."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def training_changes(saved: Mapping[str, Any], now: Mapping[str, Any], allowed: Sequence[str] = ()) -> list[str]:
    """The settings of ``now`` that change the training against the checkpoint's ``saved`` config.

    Both are resolved configs. A key the checkpoint lacks (written before the key existed) is not a
    change: its default reproduces what that run did. ``allowed`` names keys or groups (``optimizer``,
    ``data.train``) the user means to change.

    Returns:
        ``key: old → new`` lines, sorted.
    """
    old = flatten({g: saved.get(g) for g in COMPARED})
    new = flatten({g: now.get(g) for g in COMPARED})

    def exempt(key: str) -> bool:
        return key in OPERATIONAL or any(key == a or key.startswith(f"{a}.") for a in allowed)

    return sorted(
        f"{key}: {old[key]!r} → {new.get(key, '<removed>')!r}"
        for key in old
        if not exempt(key) and (key not in new or old[key] != new[key])
    )


def refuse_changes(changes: list[str], path: Path, run_dir: Path, saved: Mapping[str, Any]) -> CheckpointError:
    """The error for a resume whose config changed the training (and ``.hydra/`` put back as it was)."""
    restore_hydra(run_dir, saved)
    keys = ",".join(line.split(":", 1)[0] for line in changes)
    listed = "\n".join(f"  {line}" for line in changes)
    return CheckpointError(
        f"cannot resume from {path}: this command changes {len(changes)} setting(s) that change the training:\n"
        f"{listed}\nResume with the original values, name the changes you mean with trainer.resume_allow=[{keys}], "
        "or start a new run in another directory (hydra.run.dir=...)"
    )


# ---- the lock ----------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (this pid) for the duration; refuse while another live process holds it.

    Raises:
        CheckpointError: another run (its pid) is using the directory.
    """
    lock = run_dir / LOCK
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = -1
            if pid > 0 and pid != os.getpid() and _alive(pid):
                restore_hydra(run_dir)  # the live run's config, not the refused command's
                raise CheckpointError(
                    f"{run_dir} is in use by another recognizer-train (pid {pid}, {lock}): one run per directory. "
                    "Wait for it to end, or use another hydra.run.dir"
                ) from None
            log.warning("taking over %s left by process %s, which is no longer running", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().split()[0] == str(os.getpid()):
                lock.unlink()


# ---- a fresh run, the .hydra files -------------------------------------------------------------------------


def check_fresh(run_dir: Path, overwrite: bool) -> None:
    """Refuse a fresh run into a directory holding checkpoints, or move them aside with ``overwrite``.

    Files of a run that ended before its first checkpoint (a crash, a refused audit) are moved aside
    too, so the new run's ``metrics.jsonl`` starts empty; nothing is deleted.

    Raises:
        CheckpointError: the directory holds another run's checkpoints and ``overwrite`` is off.
    """
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    leftovers = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found and not leftovers:
        return
    if found and not overwrite:
        restore_hydra(run_dir)  # the config of the run whose checkpoints these are
        names = ", ".join(p.name for p in found)
        raise CheckpointError(
            f"{run_dir} holds another run's checkpoints ({names}): a new run would mix its metrics and files with "
            "them. Continue that run with trainer.resume=auto, use another hydra.run.dir, or set "
            "trainer.overwrite=true to move its files into previous/ first"
        )
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    aside = run_dir / "previous" / stamp
    aside.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, *(p.name for p in run_dir.glob("predictions_*.tsv"))):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), aside / name)
    accepted = run_dir / HYDRA_DIR / ACCEPTED
    if accepted.is_dir():
        shutil.move(str(accepted), aside / "hydra")
    why = "trainer.overwrite=true" if found else "no checkpoint, a run that ended early"
    log.warning("%s: moved the previous run's files to %s", why, aside)


def hydra_files(run_dir: Path) -> dict[str, bytes]:
    """This command's ``.hydra/*.yaml`` as Hydra wrote them (file name → content), read before the run lock:
    :func:`accept_hydra` writes these, whatever a refused command put back in the meantime."""
    return {f.name: f.read_bytes() for f in sorted((run_dir / HYDRA_DIR).glob("*.yaml"))}


def accept_hydra(run_dir: Path, files: Mapping[str, bytes]) -> None:
    """Make ``files`` (:func:`hydra_files`) the config files of the run the directory now holds: in ``.hydra``
    and in the copy a refused command puts back (:func:`restore_hydra`)."""
    if not files:
        return
    hydra = run_dir / HYDRA_DIR
    (hydra / ACCEPTED).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (hydra / name).write_bytes(content)
        (hydra / ACCEPTED / name).write_bytes(content)


def restore_hydra(run_dir: Path, saved: Mapping[str, Any] | None = None) -> None:
    """Put back the accepted ``.hydra/*.yaml`` over the ones Hydra wrote for a refused command.

    A directory written before the copies were kept gets the checkpoint's (resolved) config ``saved``
    instead, where there is one.
    """
    accepted = run_dir / HYDRA_DIR / ACCEPTED
    if accepted.is_dir():
        for f in accepted.glob("*.yaml"):
            shutil.copy2(f, run_dir / HYDRA_DIR / f.name)
    elif saved is not None and (run_dir / HYDRA_DIR / "config.yaml").is_file():
        (run_dir / HYDRA_DIR / "config.yaml").write_text(OmegaConf.to_yaml(dict(saved)), encoding="utf-8")
