"""BatchNorm whose training statistics come from the valid (unpadded) positions only.

Why not plain ``nn.BatchNorm``: in training it averages over every position of the padded batch,
so a sample's normalisation (and the running statistics kept for evaluation) depends on how much
padding its batch carries — on the widest sample beside it and on the bucketing. Why not a norm that
needs no mask (LayerNorm over channels per frame, GroupNorm): that is a different model, whose
accuracy on the recipes would have to be measured again, and whose evaluation would no longer match
the checkpoints already trained. Masked BatchNorm is the same model on the valid frames: the same
parameters and buffers (state_dict keys unchanged, old checkpoints load), and in evaluation the very
same ``F.batch_norm`` with the running statistics (so TorchScript and ONNX exports are unchanged).

A sample's training output still depends on the *valid* frames of the other samples in its batch:
that is what batch normalisation is. It no longer depends on the padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class MaskedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over ``(B, C, ...)`` inputs with a mask of the valid positions.

    Training: mean and (biased) variance per channel over the positions where ``mask`` is nonzero;
    the running statistics are updated from those, with the unbiased variance, as ``nn.BatchNorm``
    does. Evaluation (or ``track_running_stats`` with ``training=False``): plain ``F.batch_norm`` with
    the running statistics, bit for bit ``nn.BatchNorm``. Output values at masked positions are
    normalised too (with the valid statistics) but carry no meaning; callers zero or ignore them.

    Statistics are computed in float32 whatever the input dtype (autocast), then the output is cast
    back. No host synchronisation: a batch without any valid position leaves the running statistics
    unchanged through ``torch.where``, not a Python branch.

    Args are those of ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (``num_features``, ``eps``,
    ``momentum``, ``affine``, ``track_running_stats``).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"MaskedBatchNorm expects (B, C, ...) input, got shape {tuple(input.shape)}")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalise ``x`` ``(B, C, *S)``; ``mask`` broadcasts to ``(B, 1, *S)``, nonzero on valid positions.

        Without a mask (or in evaluation) this is ``nn.BatchNorm``'s forward.
        """
        self._check_input_dim(x)
        if mask is None or not (self.training or not self.track_running_stats):
            return super().forward(x)
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        xf = x.float()
        valid = _rows(mask.to(torch.float32).expand(x.size(0), 1, *x.shape[2:]))  # (N, 1)
        with torch.no_grad():  # the statistics' dependence on x is in _MaskedNorm.backward
            mean, var, count = _valid_stats(_rows(xf), valid)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, count)
        weight = self.weight.float() if self.weight is not None else torch.ones_like(mean)
        bias = self.bias.float() if self.bias is not None else torch.zeros_like(mean)
        y = _MaskedNorm.apply(xf, valid, mean, torch.rsqrt(var + self.eps), count.clamp(min=1.0), weight, bias)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Exponential (or, with ``momentum=None``, cumulative) average of the valid-frame statistics."""
        assert self.running_mean is not None and self.running_var is not None
        valid = (count > 1).float()  # fewer than two valid positions: no variance estimate, no update
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
            assert self.num_batches_tracked is not None
            factor = valid / self.num_batches_tracked.float()
        else:
            factor = valid * self.momentum
        unbiased = var * count / (count - 1).clamp(min=1.0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor.to(self.running_mean.dtype))
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor.to(self.running_var.dtype))


def _rows(t: Tensor) -> Tensor:
    """``(B, C, *S)`` → ``(N, C)``: a view for channels-last activations (the CRNN's), else a copy.

    Every full-size operation of the norm runs on rows, the mask as an ``(N, 1)`` column and each sum a
    reduction over the first axis: forward and backward together measured 2.3× faster than the same
    formulas broadcast in ``(B, C, H, W)`` against a ``(B, 1, H, W)`` mask (crnn_large's first block on
    Hooker-sized lines, 16 × 16 × 48 × 700 channels-last, one thread: 310–323 ms → 126–143 ms).
    """
    return t.movedim(1, -1).reshape(-1, t.size(1))


def _rows_into(like: Tensor, compute: Callable[[Tensor | None], Tensor]) -> Tensor:
    """A new ``(B, C, *S)`` tensor in ``like``'s layout holding ``compute(out)``'s rows: written in place
    through ``out`` when the rows of that layout are a view, else computed (``out=None``) and laid out.
    Never a view of a temporary: the models apply in-place activations to a norm's output."""
    result = torch.empty_like(like)
    rows = _rows(result)
    if rows.data_ptr() == result.data_ptr() and rows.is_contiguous():
        compute(rows)
        return result
    shape = (like.size(0), *like.shape[2:], like.size(1))
    return result.copy_(compute(None).view(shape).movedim(-1, 1))


def _valid_stats(rows: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of ``rows`` ``(N, C)`` over the rows where ``valid`` ``(N, 1)``
    is 1, and their count. ``sum`` rather than a matrix product with the mask: its pairwise summation
    keeps fp32 sums over 10^5-10^6 rows accurate (a GEMV is ~100x less so)."""
    count = valid.sum()  # a 0-dim tensor: no host sync
    n = count.clamp(min=1.0)
    masked = rows * valid
    mean = masked.sum(0) / n
    var = (masked.mul_(rows).sum(0) / n - mean.pow(2)).clamp(min=0.0)  # E[x²] − E[x]² in fp32: ample here
    return mean, var, count


class _MaskedNorm(torch.autograd.Function):
    """``y = (x − mean) · rstd · weight + bias`` on rows ``(N, C)``, with BatchNorm's gradient restricted to
    the valid rows ``m`` ``(N, 1)``.

    Autograd through the masked statistics takes about twice the full-size operations of this closed
    form (measured: the CRNN's training step at 64 px went from 1.00 to 1.45 × plain BatchNorm's time;
    with this backward, see docs/training.md, "Speed per step on CPU").
    With ``x̂ = (x − mean) · rstd`` and sums over the valid rows of each channel:
    ``db = Σ m·dy``, ``dw = Σ m·dy·x̂ = rstd · (Σ m·dy·x − mean · db)``,
    ``dx = w · rstd · (dy − m · (db + x̂ · dw) / n) = s · dy − m · s · (k0 + k1 · x)`` with ``s = w · rstd``,
    ``k1 = rstd · dw / n``, ``k0 = db / n − mean · k1``: three full-size passes after the two sums.
    """

    @staticmethod
    def forward(ctx, x, m, mean, rstd, n, weight, bias):
        scale = rstd * weight
        ctx.save_for_backward(x, m, mean, rstd, n, weight)
        shift = bias - mean * scale
        return _rows_into(x, lambda out: torch.addcmul(shift, _rows(x), scale, out=out))

    @staticmethod
    def backward(ctx, dy):
        x, m, mean, rstd, n, weight = ctx.saved_tensors
        rows, g = _rows(x), _rows(dy.contiguous(memory_format=_layout(x)))
        gm = g * m  # the statistics only see the valid rows
        db = gm.sum(0)
        dw = rstd * (gm.mul_(rows).sum(0) - mean * db)
        s = rstd * weight
        k1 = rstd * dw / n
        k0 = db / n - mean * k1

        def dx(out: Tensor | None) -> Tensor:  # s · dy − m · s · (k0 + k1 · x)
            return torch.addcmul(-k0 * s, rows, -k1 * s, out=out).mul_(m).addcmul_(g, s)

        return _rows_into(x, dx), None, None, None, None, dw, db


def _layout(t: Tensor) -> torch.memory_format:
    """Channels-last for a 4-D channels-last tensor, else the contiguous format."""
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def masked_batch_norm_from(norm: nn.modules.batchnorm._BatchNorm) -> MaskedBatchNorm:
    """A :class:`MaskedBatchNorm` with ``norm``'s settings, with a copy of its parameters and buffers."""
    masked = MaskedBatchNorm(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    masked.load_state_dict(norm.state_dict())
    return masked
