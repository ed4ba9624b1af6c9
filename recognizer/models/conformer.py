"""Conformer-CTC: convolutional subsampling → ``torchaudio.models.Conformer`` → linear head.

Padding invariance: a sample gives the same output alone as padded in a batch (eval mode). The
subsampling front zeroes padded frames after every convolution, attention masks padded keys, and
— because torchaudio's layer does not mask its depthwise convolution, which would otherwise mix
padded frames into the last valid ones — the layers are run here with the padded frames zeroed
right before that convolution (the weights and modules are torchaudio's own). In training, the
BatchNorm after that convolution takes its statistics from the valid frames only (torchaudio's
``BatchNorm1d`` is swapped for a :class:`~recognizer.models.norm.MaskedBatchNorm` with the same
state_dict keys), so a sample's training output does not depend on its batch's padding either.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchaudio.models import Conformer as TAConformer
from torchaudio.models.conformer import ConformerLayer

from recognizer.models.base import Recognizer
from recognizer.models.norm import masked_batch_norm_from


def frame_mask(lengths: Tensor, frames: int) -> Tensor:
    """``(B, frames)`` bool mask, True on the first ``lengths[b]`` frames."""
    return torch.arange(frames, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def conv_out_length(lengths: Tensor) -> Tensor:
    """Frames after a kernel-3, stride-2, padding-1 convolution: ``floor((L - 1) / 2) + 1``."""
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


class ConvSubsampling(nn.Module):
    """``log2(factor)`` 3×3 stride-2 Conv2d + ReLU layers over (mel, time), then a linear projection.

    Args:
        n_mels: input mel bins.
        d_model: output feature size.
        factor: time subsampling, a power of two >= 2.
        channels: convolution channels (the front's cost grows with their square).
    """

    def __init__(self, n_mels: int, d_model: int, factor: int = 4, channels: int = 64) -> None:
        super().__init__()
        layers = int(math.log2(factor)) if factor >= 2 else 0
        if layers < 1 or 2**layers != factor:
            raise ValueError(f"subsampling factor must be a power of two >= 2, got {factor}")
        convs, c_in, freq = [], 1, n_mels
        for _ in range(layers):
            convs.append(nn.Conv2d(c_in, channels, 3, stride=2, padding=1))
            c_in, freq = channels, (freq - 1) // 2 + 1
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Linear(channels * freq, d_model)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for _ in self.convs:
            lengths = conv_out_length(lengths)
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 1, F, T)`` → ``(B, T', d_model)`` and ``(B,)`` lengths ``T'``; padded frames are zero."""
        # Pad T to a multiple of the factor: the valid frames do not change (the padding is masked),
        # and torch.compile's dynamic shapes then never see an odd width (Inductor in torch 2.14
        # fails on those in this front's backward with a stride assertion).
        factor, frames = 2 ** len(self.convs), x.size(-1)
        x = F.pad(x, (0, (frames + factor - 1) // factor * factor - frames))  # (no % on symbolic sizes)
        x = x * frame_mask(lengths, x.size(-1))[:, None, None, :]  # whatever the padding value was
        for conv in self.convs:
            x = torch.relu(conv(x))
            lengths = conv_out_length(lengths)
            x = x * frame_mask(lengths, x.size(-1))[:, None, None, :]
        return self.proj(rearrange(x, "b c f t -> b t (c f)")), lengths


def sinusoidal_positions(frames: int, d_model: int, device: torch.device) -> Tensor:
    """``(frames, d_model)`` absolute sinusoidal position encodings (Vaswani et al., 2017)."""
    pos = torch.arange(frames, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(frames, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


def _convolution(layer: ConformerLayer, x: Tensor, keep: Tensor) -> Tensor:
    """torchaudio's convolution module on ``(B, T, D)``: padded frames zeroed before the depthwise
    conv, and its BatchNorm's statistics taken over the valid frames."""
    module = layer.conv_module
    seq = module.sequential  # pointwise, GLU, depthwise, norm, SiLU, pointwise, dropout
    y = module.layer_norm(x).transpose(1, 2)  # (B, D, T)
    mask = keep.unsqueeze(1)  # (B, 1, T)
    y = seq[2](seq[1](seq[0](y)) * mask)
    y = seq[3](y, mask)
    for m in seq[4:]:
        y = m(y)
    return x + y.transpose(1, 2)


def _layer(layer: ConformerLayer, x: Tensor, padding: Tensor, keep: Tensor) -> Tensor:
    """One Conformer layer (same order and weights as ``ConformerLayer.forward``), ``(B, T, D)``."""
    x = x + 0.5 * layer.ffn1(x)
    if layer.convolution_first:
        x = _convolution(layer, x, keep)
    y = layer.self_attn_layer_norm(x).transpose(0, 1)  # (T, B, D)
    y, _ = layer.self_attn(y, y, y, key_padding_mask=padding, need_weights=False)
    x = x + layer.self_attn_dropout(y.transpose(0, 1))
    if not layer.convolution_first:
        x = _convolution(layer, x, keep)
    x = x + 0.5 * layer.ffn2(x)
    return layer.final_layer_norm(x)


class ConformerCTC(Recognizer):
    """Conformer encoder with a CTC head for ``(B, 1, n_mels, T)`` log-mel inputs.

    Args:
        num_classes: ``C`` = charset + blank; derived from the alphabet at instantiation.
        height: input mel bins (``${data.height}``).
        d_model: encoder width.
        num_layers: Conformer layers.
        num_heads: attention heads (must divide ``d_model``).
        ffn_dim: hidden size of the feed-forward modules.
        kernel_size: depthwise convolution kernel (odd).
        subsampling: time subsampling of the front, a power of two (4 → 40 ms frames at a 10 ms hop).
        subsampling_channels: channels of the subsampling convolutions.
        dropout: dropout in the encoder and before the head, in [0, 1).
        positional: add sinusoidal absolute positions after the front (attention is otherwise
            position-blind; the convolutions give relative position only locally).
    """

    bf16_on_cpu = True  # 1.6x the fp32 samples/s on an avx512_bf16 CPU (docs/scale.md, "Model throughput")

    def __init__(
        self,
        num_classes: int,
        height: int,
        d_model: int = 144,
        num_layers: int = 4,
        num_heads: int = 4,
        ffn_dim: int = 576,
        kernel_size: int = 15,
        subsampling: int = 4,
        subsampling_channels: int = 64,
        dropout: float = 0.1,
        positional: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (blank + a symbol), got {num_classes}")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_classes = num_classes
        self.height = height
        self.positional = positional
        self.front = ConvSubsampling(height, d_model, subsampling, subsampling_channels)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TAConformer(
            input_dim=d_model,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            depthwise_conv_kernel_size=kernel_size,
            dropout=dropout,
        )
        for layer in self.encoder.conformer_layers:
            dw = layer.conv_module.sequential[2]
            if not (isinstance(dw, nn.Conv1d) and dw.groups == dw.in_channels > 1):
                raise RuntimeError(
                    "torchaudio's ConformerLayer changed: expected its depthwise Conv1d at sequential[2]"
                )
            norm = layer.conv_module.sequential[3]
            if not isinstance(norm, nn.BatchNorm1d):
                raise RuntimeError("torchaudio's ConformerLayer changed: expected its BatchNorm1d at sequential[3]")
            layer.conv_module.sequential[3] = masked_batch_norm_from(norm)  # same state_dict keys
        self.head = nn.Linear(d_model, num_classes)

    def output_lengths(self, input_lengths: Tensor) -> Tensor:
        """Exact output frames for inputs of ``input_lengths`` frames."""
        return self.front.output_lengths(input_lengths.long())

    def forward(self, inputs: Tensor, input_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``(B, 1, n_mels, T)`` features with ``(B,)`` lengths to ``(B, T', C)`` logits and ``(B,)`` lengths."""
        x, lengths = self.front(inputs, input_lengths.long())  # (B, T', D)
        if self.positional:
            x = x + sinusoidal_positions(x.size(1), x.size(2), x.device).to(x.dtype)
        keep = frame_mask(lengths, x.size(1))
        x = self.dropout(x) * keep.unsqueeze(-1)
        padding, keep_f = ~keep, keep.to(x.dtype)
        for layer in self.encoder.conformer_layers:
            x = _layer(layer, x, padding, keep_f)
        return self.head(self.dropout(x)), lengths  # (B, T', C), (B,)
