"""Training throughput (samples/s) of the CRNN and the Conformer: eager vs ``torch.compile``, and on
CUDA fp32 vs AMP fp16 (GradScaler) vs bf16, and cuDNN vs native CTC, with peak memory.

Each configuration runs the real :func:`recognizer.engine.loop.train_step` (checks, fp32 CTC, clipping,
guard) on the default config of its recipe:

- ``crnn``: ``data=digit_lines`` (height 16), batches of 32 lines with widths drawn from the embedded
  set's range (11–131 px), so shapes vary from step to step as in training;
- ``crnn-lines``: the generic ``data=lines`` CRNN (height 64), widths 128–390 px (kraken's digit-line
  set of ``scripts/kraken_digit_lines.py`` scaled to 64 px); use ``--batch-size 16`` (``data=lines``'s);
- ``crnn-hooker``: ``experiment=htr_hooker_crnn`` (``crnn_large``, 4.2M, 48 px), widths 100–770 px
  (5th–95th percentile of the Hooker lines at 48 px); an image recipe's widths scale with
  ``--override data.height=H``;
- ``crnn-fsdd``: ``experiment=asr_fsdd_crnn`` (0.88M, 40 log-mel bins), batches of 32 FSDD clips with
  their padding (0.55–1.5 s: 55–150 frames);
- ``conformer``: ``experiment=asr_digits_conformer`` (80 log-mel bins), batches of 32 utterances of
  0.5–2.5 s (50–250 frames of 10 ms);
- ``conformer-large`` (only when named in ``--models``; meant for a GPU): the 26M model of
  ``experiment=librispeech_conformer_ctc`` on utterances of 2–15 s (200–1500 frames).

Inputs are random (throughput does not depend on their content); the same ``--steps`` batches are
cycled after ``--warmup`` steps (compilation happens there). Prints one table row per configuration.

``--clock cpu`` times the rounds in CPU seconds of this process (``time.process_time``) instead of
wall-clock seconds: on a CPU shared with other jobs, with ``--threads 1``, it measures what one
core does rather than the share of it this process got (the other jobs still cost it some cache).

Usage::

    python scripts/bench_models.py                                  # CPU: eager and compile
    python scripts/bench_models.py --models crnn-fsdd conformer --modes eager --precisions 32 bf16-mixed \
        --threads 1 --clock cpu                                     # fp32 vs bf16 on a busy CPU
    python scripts/bench_models.py --device cuda --precisions 32 16-mixed bf16-mixed --ctc native cudnn
    python scripts/bench_models.py --models crnn-lines --modes eager --batch-size 16 \\
        --override model.channels_last=false
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from recognizer import CONFIG_DIR
from recognizer.data.batching import Batch
from recognizer.engine.loop import TrainState, train_step
from recognizer.engine.precision import resolve_precision
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.runtime import attach_stability, make_ctc

RECIPES = {
    "crnn": (["data=digit_lines", "model=crnn"], (11, 131)),
    "crnn-lines": (["data=lines", "model=crnn"], (128, 390)),
    "crnn-hooker": (["experiment=htr_hooker_crnn"], (100, 770)),
    "crnn-fsdd": (["experiment=asr_fsdd_crnn"], (55, 150)),
    "conformer": (["experiment=asr_digits_conformer"], (50, 250)),
    # the GPU recipe's model (26M) on LibriSpeech-like lengths: 2-15 s
    "conformer-large": (["experiment=librispeech_conformer_ctc"], (200, 1500)),
}


def config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "paths.output_dir=."])


def random_batches(
    model: torch.nn.Module, height: int, widths: tuple[int, int], batch_size: int, n: int, seed: int = 0
) -> list[Batch]:
    """``n`` random batches with varying widths and feasible labels (about one label per 4 frames)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for k in range(n):
        w = torch.randint(widths[0], widths[1] + 1, (batch_size,), generator=g)
        frames = model.output_lengths(w)
        lengths = (frames // 4).clamp(min=1)
        targets = torch.randint(1, model.num_classes, (batch_size, int(lengths.max())), generator=g)
        inputs = torch.rand(batch_size, 1, height, int(w.max()), generator=g)
        ids = [f"b{k}-{i}" for i in range(batch_size)]
        batches.append(Batch(inputs, w, targets, lengths, [""] * batch_size, ids))
    return batches


def profiler_activities(device: torch.device) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    return [*acts, torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else acts


def bench(name: str, compiled: bool, precision_name: str, ctc_kind: str, args: argparse.Namespace) -> dict:
    overrides, widths = RECIPES[name]
    cfg = config([*overrides, f"stability.cudnn_ctc={ctc_kind == 'cudnn'}", *args.override])
    if "n_mels" not in cfg.data:  # line images: the widths keep their aspect ratio at another height
        scale = cfg.data.height / config(overrides).data.height
        widths = (round(widths[0] * scale), round(widths[1] * scale))
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=11).to(device)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=10_000)
    precision = resolve_precision(precision_name, device)
    state = TrainState(model, optimizer, scheduler, precision, NonFiniteGuard("skip", 10**9))
    if compiled:
        state.train_forward = torch.compile(model)
    batches = random_batches(model, cfg.data.height, widths, args.batch_size, args.steps)
    ctc = make_ctc(cfg.stability)
    with tempfile.TemporaryDirectory() as run_dir:
        attach_stability(state, cfg.stability, run_dir)
        start = time.perf_counter()
        for i in range(args.warmup):
            train_step(state, batches[i % len(batches)], ctc, 1.0)
        warmup_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if args.profile:  # one extra round under the profiler: where the step's time goes
            with torch.profiler.profile(activities=profiler_activities(device)) as prof:
                for batch in batches:
                    train_step(state, batch, ctc, 1.0)
            key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(f"profile of {name} {precision_name}:")
            print(prof.key_averages().table(sort_by=key, row_limit=args.profile))
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        rounds = []
        for _ in range(args.rounds):
            start = clock()
            for batch in batches:
                train_step(state, batch, ctc, 1.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rounds.append(clock() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    seconds = statistics.median(rounds)
    return {
        "model": f"{name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M)",
        "mode": "compile" if compiled else "eager",
        "precision": precision.name,
        "ctc": ctc_kind,
        "samples/s": args.batch_size * len(batches) / seconds,
        "ms/step": 1e3 * seconds / len(batches),
        "warmup s": warmup_s,
        "peak MiB": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["crnn", "conformer"], choices=list(RECIPES))
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--precisions", nargs="+", default=["32"], help="trainer.precision values to compare")
    parser.add_argument("--ctc", nargs="+", default=["native"], choices=["native", "cudnn"], help="CTC kernels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="distinct batches per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest ops of one extra round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="time rounds in wall-clock seconds, or in this process's CPU seconds (a shared CPU; use --threads 1)",
    )
    parser.add_argument(
        "--override", nargs="*", default=[], help="extra config overrides, e.g. model.channels_last=false"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), batch {args.batch_size}, "
        f"{args.clock} clock"
    )
    header = ["model", "mode", "precision", "ctc", "samples/s", "ms/step", "warmup s", "peak MiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models:
        for precision in args.precisions:
            for ctc_kind in args.ctc:
                for mode in args.modes:
                    try:
                        row = bench(name, mode == "compile", precision, ctc_kind, args)
                    except Exception as e:  # e.g. a torch.compile failure: report it, go on with the rest
                        reason = " ".join(str(e).split())[:160]
                        row = {"model": name, "mode": mode, "precision": precision, "ctc": ctc_kind, "error": reason}
                    cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
                    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
