"""Peak memory of a command and all its child processes (loader workers included), sampled from /proc.

    python scripts/peak_memory.py -- recognizer-train experiment=htr_hooker_crnn trainer.max_steps=30

Every ``--every`` seconds it reads the proportional set size (PSS, ``/proc/PID/smaps_rollup``) of the
command and of every descendant: PSS splits each shared page between the processes that map it, so the
sum over the tree is the memory the command really holds (RSS would count a forked worker's inherited
pages once per worker). It prints the peak of that sum, and each process's own peak PSS and RSS. Linux
only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(PSS, RSS) of ``pid`` in KiB, or None if it has ended."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.endswith("kB")}
    return fields.get("Pss", 0), fields.get("Rss", 0)


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:70]
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", type=float, default=0.5, help="seconds between samples (default 0.5)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    proc = subprocess.Popen(command)
    peak_total, peaks, names = 0, {}, {}
    start = time.monotonic()
    while proc.poll() is None:
        total = 0
        for pid in [proc.pid, *children(proc.pid)]:
            sample = memory_kib(pid)
            if sample is None:
                continue
            total += sample[0]
            old = peaks.get(pid, (0, 0))
            peaks[pid] = (max(old[0], sample[0]), max(old[1], sample[1]))
            names.setdefault(pid, name(pid))
        peak_total = max(peak_total, total)
        time.sleep(args.every)
    wall = time.monotonic() - start
    print(f"\nexit code {proc.returncode}, {wall:.0f} s; peak PSS of the process tree: {peak_total / 2**20:.2f} GiB")
    for pid, (pss, rss) in sorted(peaks.items(), key=lambda kv: -kv[1][0]):
        print(f"  pid {pid}: peak PSS {pss / 2**20:.2f} GiB, peak RSS {rss / 2**20:.2f} GiB  {names[pid]}")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
