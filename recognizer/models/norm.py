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
        m = mask.to(torch.float32).expand(x.size(0), 1, *x.shape[2:])  # (B, 1, *S)
        with torch.no_grad():  # the statistics' dependence on x is in _MaskedNorm.backward
            mean, var, count = _valid_stats(xf, m)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, count)
        weight = self.weight.float() if self.weight is not None else torch.ones_like(mean)
        bias = self.bias.float() if self.bias is not None else torch.zeros_like(mean)
        y = _MaskedNorm.apply(xf, m, mean, torch.rsqrt(var + self.eps), count.clamp(min=1.0), weight, bias)
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
    """``(B, C, *S)`` → ``(N, C)``: a view for channels-last activations, where a reduction over rows is
    fast (reducing (B, H, W) of a channels-last tensor in place is several times slower)."""
    return t.movedim(1, -1).reshape(-1, t.size(1))


def _valid_stats(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` over the positions where ``m`` is 1, and their count."""
    rows, valid = _rows(x), _rows(m)  # (N, C), (N, 1)
    count = valid.sum()  # a 0-dim tensor: no host sync
    n = count.clamp(min=1.0)
    masked = rows * valid
    mean = masked.sum(0) / n
    var = ((masked * rows).sum(0) / n - mean.pow(2)).clamp(min=0.0)  # E[x²] − E[x]² in fp32: ample here
    return mean, var, count


class _MaskedNorm(torch.autograd.Function):
    """``y = (x − mean) · rstd · weight + bias`` with BatchNorm's gradient restricted to the valid positions.

    Autograd through the masked statistics takes about twice the full-size operations of this closed
    form (measured: the CRNN's training step at 64 px went from 1.00 to 1.45 × plain BatchNorm's time;
    with this backward, see docs/training.md, "Speed per step on CPU").
    ``dx = w · rstd · (dy − m · (Σ m·dy + x̂ · Σ m·dy·x̂) / n)``,
    ``dw = Σ m·dy·x̂``, ``db = Σ m·dy`` (sums over the valid positions of each channel).
    """

    @staticmethod
    def forward(ctx, x, m, mean, rstd, n, weight, bias):
        scale = rstd * weight
        ctx.save_for_backward(x, m, mean, rstd, n, weight)
        return torch.addcmul(_channel(bias - mean * scale, x.dim()), x, _channel(scale, x.dim()))

    @staticmethod
    def backward(ctx, dy):
        x, m, mean, rstd, n, weight = ctx.saved_tensors
        dim = x.dim()
        xhat = (x - _channel(mean, dim)) * _channel(rstd, dim)
        gm = dy * m  # the statistics only see the valid positions
        db = _rows(gm).sum(0)
        dw = _rows(gm * xhat).sum(0)
        correction = (_channel(db, dim) + xhat * _channel(dw, dim)) * (m / n)
        dx = (dy - correction) * _channel(rstd * weight, dim)
        return dx, None, None, None, None, dw, db


def _channel(v: Tensor, dim: int) -> Tensor:
    """``(C,)`` → ``(1, C, 1, ...)`` for broadcasting against a ``dim``-dimensional input."""
    return v.view(1, -1, *([1] * (dim - 2)))


def masked_batch_norm_from(norm: nn.modules.batchnorm._BatchNorm) -> MaskedBatchNorm:
    """A :class:`MaskedBatchNorm` with ``norm``'s settings, with a copy of its parameters and buffers."""
    masked = MaskedBatchNorm(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    masked.load_state_dict(norm.state_dict())
    return masked
