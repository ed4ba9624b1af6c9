"""The ``stability`` settings as one typed object (:class:`StabilityOptions`), built from the config node.

Every key and its meaning: ``recognizer/conf/stability/default.yaml``; the defaults below are the same
values (a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class StabilityOptions:
    """Pre-flight audit, CTC settings, non-finite policy and monitors of a training run."""

    # pre-flight audit of every split
    audit_policy: str = "error"
    unknown: str = "error"
    strip_format_chars: bool = False
    min_frames_per_label: float = 2.0
    max_label_length: int | None = None
    scan_inputs: bool = True
    # the loss
    zero_infinity: bool = True
    ctc_reduction: str = "mean"
    cudnn_ctc: bool = False
    # non-finite steps
    nonfinite_policy: str = "raise"
    max_consecutive_skips: int = 5
    min_loss_scale: float = 1.0e-4
    max_consecutive_overflows: int = 25
    save_nonfinite: bool = True
    max_nonfinite_files: int = 10
    localize: bool = True
    rollback_every_n_steps: int = 50
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    # monitors
    collapse_warmup_steps: int = 500
    collapse_patience: int = 2
    collapse_threshold: float = 0.99
    divergence_check: bool = True
    divergence_factor: float = 3.0
    divergence_patience_steps: int = 50
    divergence_window: int = 50
    divergence_val_factor: float = 1.2
    divergence_val_patience: int = 2
    divergence_val_min_rise: float = 0.1
    divergence_lr_factor: float = 0.03
    # logging and deep dives
    grad_norm_every_step: bool = False
    detect_anomaly: bool = False

    @classmethod
    def from_config(
        cls, node: DictConfig | Mapping[str, Any] | StabilityOptions, strict: bool = True
    ) -> StabilityOptions:
        """The options of a ``stability`` node; keys it lacks keep their defaults.

        Args:
            node: the composed node, a plain mapping (a checkpoint's stored config) or options already.
            strict: refuse keys this version does not know (a typo in a user's own group); False for the
                config stored in a checkpoint, which a newer version may have written.

        Raises:
            ValueError: ``strict`` and a key that is not an option, naming it.
        """
        if isinstance(node, StabilityOptions):
            return node
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        assert isinstance(values, dict)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and strict:
            raise ValueError(
                f"stability: unknown key(s) {', '.join(unknown)}; the keys are those of "
                "recognizer/conf/stability/default.yaml"
            )
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> StabilityOptions:
        """A copy with ``changes`` applied (e.g. the doctor's audit that collects instead of raising)."""
        return dataclasses.replace(self, **changes)
