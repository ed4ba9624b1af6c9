"""CTC loss kernels on CUDA: PyTorch's native kernel against cuDNN's, forward + backward.

PyTorch runs cuDNN's CTC only for inputs it accepts (``at::_use_cudnn_ctc_loss``): fp32 log-probs,
blank 0, 1-D concatenated int32 targets on the CPU, every input length equal to ``T`` and labels of
at most 256 symbols. The training loop's padded int64 targets on the device never qualify, so
``stability.cudnn_ctc=true`` changes nothing there; this script feeds each kernel the inputs it
needs and checks with the profiler which one ran (``aten::_cudnn_ctc_loss`` or
``aten::_ctc_loss``), then compares time, loss and gradients.

Usage::

    python scripts/bench_ctc.py                      # needs a CUDA device
    python scripts/bench_ctc.py --shapes 200,32,30,40 400,32,30,80 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def kernel_ops(fn) -> set[str]:
    """The CTC ops that ``fn()`` dispatches to."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "ctc" in e.key and e.key.startswith("aten::_")}


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after 3 untimed ones)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(T: int, B: int, C: int, L: int, repeats: int) -> dict:
    """One shape: ``T`` frames, ``B`` samples, ``C`` classes, labels of ``L`` symbols."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(T, B, C, generator=g).cuda().requires_grad_()
    target_lengths = torch.full((B,), L, dtype=torch.int32)
    targets = torch.randint(1, C, (B, L), generator=g, dtype=torch.int32)
    input_lengths = torch.full((B,), T, dtype=torch.int32)

    def native() -> torch.Tensor:  # what the training loop runs: padded int64 targets on the device
        with torch.backends.cudnn.flags(enabled=False):
            lp = logits.log_softmax(-1)
            return F.ctc_loss(
                lp,
                targets.long().cuda(),
                input_lengths.long().cuda(),
                target_lengths.long().cuda(),
                reduction="sum",
                zero_infinity=True,
            )

    def cudnn() -> torch.Tensor:  # cuDNN's contract: concatenated int32 targets on the CPU
        lp = logits.log_softmax(-1)
        return F.ctc_loss(lp, targets.flatten(), input_lengths, target_lengths, reduction="sum", zero_infinity=True)

    results = {}
    for name, fn in (("native", native), ("cudnn", cudnn)):
        logits.grad = None
        loss = fn()
        loss.backward()
        results[name] = (loss.detach().item(), logits.grad.clone(), kernel_ops(fn))
        results[name] += (timed(lambda fn=fn: fn().backward(), repeats),)
    (n_loss, n_grad, n_ops, n_s), (c_loss, c_grad, c_ops, c_s) = results["native"], results["cudnn"]
    return {
        "shape": f"T={T} B={B} C={C} L={L}",
        "native op": ",".join(sorted(n_ops)),
        "cudnn op": ",".join(sorted(c_ops)),
        "native ms": 1e3 * n_s,
        "cudnn ms": 1e3 * c_s,
        "loss rel diff": abs(n_loss - c_loss) / abs(n_loss),
        "grad max diff": float((n_grad - c_grad).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["128,32,11,20", "200,32,30,40", "400,32,30,80", "750,32,30,150"],
        help="T,B,C,L per shape (frames, batch, classes with blank, label length <= 256)",
    )
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_ctc.py compares CUDA kernels: no CUDA device here")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows = [compare(*map(int, s.split(",")), args.repeats) for s in args.shapes]
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
