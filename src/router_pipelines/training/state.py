"""The engine's own counters: everything else in a checkpoint is a ``state_dict``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Counters, data position, best metric and log history of one run.

    Saved as ``trainer_state.json`` in every checkpoint and passed to callbacks.
    """

    global_step: int = 0  # optimizer steps completed
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of the current epoch consumed by each process
    global_batch_size: int = 0  # examples per micro-batch over all processes
    tokens_seen: int = 0  # input tokens over all processes
    best_metric: float | None = None  # best value of metric_for_best_model so far
    best_step: int | None = None  # the step it was reached at
    patience_counter: int = 0  # evaluations since the last improvement > threshold
    stopped_early: bool = False  # early stopping fired (a resumed run stays stopped)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainerState:
        """Rebuild from :meth:`to_dict` output; unknown keys (``saved_at``) are ignored."""
        values = dict(values)
        if "best_eval_loss" in values and "best_metric" not in values:
            values["best_metric"] = values["best_eval_loss"]  # checkpoints of older engines
        values["history"] = {
            key: [(int(step), float(value)) for step, value in points]
            for key, points in values.get("history", {}).items()
        }
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def moved_to(self, global_batch_size: int, batches_per_epoch: int) -> TrainerState:
        """This state for a run with another global batch (process count): same examples seen.

        The data position is kept in examples, rounded down to whole batches; a position at
        the end of an epoch moves to the start of the next.
        """
        if self.global_batch_size != global_batch_size:
            examples = self.batch_in_epoch * self.global_batch_size
            logger.warning(
                "resume: global batch %d -> %d; data position mapped to %d batches (%s)",
                self.global_batch_size,
                global_batch_size,
                examples // global_batch_size,
                "exact" if examples % global_batch_size == 0 else "rounded down",
            )
            self.batch_in_epoch = examples // global_batch_size
            self.global_batch_size = global_batch_size
        if self.batch_in_epoch >= batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return self
