"""Time to accuracy: run a training command and report when its validation CER first reached thresholds.

The clock starts when the command starts (data preparation, audit and model building included), as
a user waiting for a model sees it. Every output line of the command is time-stamped as it arrives;
validation results are read from those lines with a pattern per tool:

- ``recognizer``: the loop's ``epoch N step S: val/loss L val/cer C ...`` log line;
- ``kraken``: ketos's per-epoch validation accuracy (CER = 1 − character accuracy). ``ketos train``
  (kraken 7) prints it only to a terminal, but names each epoch's checkpoint after it
  (``checkpoint_03-0.9839.ckpt``): give its ``-o`` folder with ``--watch`` and the files are
  time-stamped as they appear (polled every 0.2 s).

Prints one row per validation (epoch, seconds since the command started, CER) and a summary: the
time to each threshold, the best CER and when it was reached, and the best CER within ``--budget``
seconds. ``--json`` writes the same as JSON. Use it for both tools one after the other on a quiet
machine, never two at once on a 2-core CPU.

Usage::

    python scripts/time_to_accuracy.py --tool recognizer --thresholds 0.05 0.01 -- \\
        recognizer-train data=lines data.train=DIR/train data.val=DIR/val
    python scripts/time_to_accuracy.py --tool kraken --watch small --json kraken.json -- \\
        ketos -d cpu train -f path -t DIR/train.txt -e DIR/val.txt -o small ...
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PATTERNS = {
    "recognizer": re.compile(r"epoch (?P<epoch>\d+) step \d+: val/loss \S+ val/cer (?P<cer>[\d.eE+-]+)"),
    # ketos: "... val_accuracy ... 0.9876" in Lightning's progress/epoch lines; the epoch counter is ours.
    "kraken": re.compile(r"val_accuracy\W+(?P<acc>[\d.]+)"),
}
CHECKPOINT = re.compile(r"checkpoint_(?P<epoch>\d+)-(?P<acc>[\d.]+)\.ckpt$")  # ketos -o FOLDER


@dataclass
class Validation:
    epoch: int
    seconds: float  # since the command started
    cer: float


def parse(line: str, tool: str, count: int) -> Validation | None:
    """The validation a ``line`` reports, or None. ``count`` numbers kraken's epochs (1-based)."""
    match = PATTERNS[tool].search(line)
    if match is None:
        return None
    groups = match.groupdict()
    if "cer" in groups:
        return Validation(int(groups["epoch"]), 0.0, float(groups["cer"]))
    return Validation(count, 0.0, 1.0 - float(groups["acc"]))


def watch(folder: Path, start: float, validations: list[Validation], stop: threading.Event) -> None:
    """Time-stamp ketos's per-epoch checkpoints (``checkpoint_NN-ACC.ckpt``) as they appear in ``folder``."""
    seen: set[str] = set()
    while True:
        finished = stop.is_set()
        for path in sorted(folder.glob("checkpoint_*.ckpt")) if folder.is_dir() else []:
            match = CHECKPOINT.search(path.name)
            if match is None or path.name in seen:
                continue
            seen.add(path.name)
            epoch, acc = int(match["epoch"]), float(match["acc"])  # written after each epoch (00 = the first)
            found = Validation(epoch, time.perf_counter() - start, 1.0 - acc)
            validations.append(found)
            print(f"  epoch {found.epoch:3d}  {found.seconds:8.1f} s  CER {found.cer:.4f}", flush=True)
        if finished:
            return
        time.sleep(0.2)


def run(
    command: list[str], tool: str, log_path: Path | None, watch_dir: Path | None = None
) -> tuple[list[Validation], float, int]:
    """Run ``command``; return its validations (time-stamped), its wall time and its exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    validations: list[Validation] = []
    log = log_path.open("w", encoding="utf-8") if log_path else None
    seen: set[str] = set()

    def read() -> None:
        assert proc.stdout is not None
        # Progress bars redraw with \r: split on it too, and count each distinct kraken result once.
        for raw in proc.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                now = time.perf_counter() - start
                if log:
                    log.write(f"{now:9.2f} {line}\n")
                found = parse(line, tool, len(validations) + 1)
                if found is None or (tool == "kraken" and line in seen):
                    continue
                seen.add(line)
                found.seconds = now
                validations.append(found)
                print(f"  epoch {found.epoch:3d}  {now:8.1f} s  CER {found.cer:.4f}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stop = threading.Event()
    watcher = None
    if watch_dir is not None:
        watcher = threading.Thread(target=watch, args=(watch_dir, start, validations, stop), daemon=True)
        watcher.start()
    status = proc.wait()
    reader.join()
    stop.set()
    if watcher is not None:
        watcher.join()
    if log:
        log.close()
    return validations, time.perf_counter() - start, status


def summarise(validations: list[Validation], thresholds: list[float], budget: float | None) -> dict:
    """Time to each threshold, the best CER (and when), the best within ``budget`` seconds."""
    reached = {f"{t:g}": next((v.seconds for v in validations if v.cer <= t), None) for t in thresholds}
    best = min(validations, key=lambda v: (v.cer, v.seconds), default=None)
    within = [v for v in validations if budget is None or v.seconds <= budget]
    best_within = min((v.cer for v in within), default=None)
    return {
        "time_to": reached,
        "best_cer": best.cer if best else None,
        "best_at_s": best.seconds if best else None,
        "best_epoch": best.epoch if best else None,
        "budget_s": budget,
        "best_cer_within_budget": best_within,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", choices=sorted(PATTERNS), default="recognizer", help="how to read val CER")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.01], help="CER thresholds")
    parser.add_argument("--budget", type=float, default=None, help="report the best CER within this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="write the validations and summary here")
    parser.add_argument("--log", type=Path, default=None, help="write the command's output, time-stamped, here")
    parser.add_argument("--watch", type=Path, default=None, help="kraken: the -o folder of its epoch checkpoints")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the training command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the training command after --")
    validations, wall, status = run(command, args.tool, args.log, args.watch)
    summary = summarise(validations, args.thresholds, args.budget)
    for threshold, seconds in summary["time_to"].items():
        print(f"time to CER <= {threshold}: " + (f"{seconds:.1f} s" if seconds is not None else "not reached"))
    if summary["best_cer"] is not None:
        print(f"best CER {summary['best_cer']:.4f} at {summary['best_at_s']:.1f} s (epoch {summary['best_epoch']})")
    if args.budget is not None and summary["best_cer_within_budget"] is not None:
        print(f"best CER within {args.budget:g} s: {summary['best_cer_within_budget']:.4f}")
    print(f"wall time {wall:.1f} s, exit status {status}")
    if args.json:
        record = {"command": command, "wall_s": wall, "status": status, **summary}
        record["validations"] = [asdict(v) for v in validations]
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    sys.exit(status)


if __name__ == "__main__":
    main()
