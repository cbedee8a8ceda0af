"""Several token stores in one run: named sources, their weights, how the weights move over
the run, and a sampler that draws each global batch from the sources in those proportions.

Each slot of a step's global batch goes to a source by a hashed uniform of (seed, step, slot)
against the step's weights, so which source a slot draws from is a pure function of those
numbers: the same at any world size (every process computes the whole batch and keeps its
share) and after a resume. Within a source, windows come in that source's own seeded order,
epoch after epoch; its position (epoch, position) is what a checkpoint saves. A small source
therefore repeats while a large one is still in its first epoch, and the run says how often.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unmask.config.schedule import decay_shape
from unmask.data.masking import mix32
from unmask.data.windows import DataPosition, Windows, WindowSampler

_MASK32 = 0xFFFFFFFF


def temperature_weights(sizes: list[int], temperature: float) -> np.ndarray:
    """Weights proportional to size^(1/T): T 1 samples by size, a larger T evens the sources out
    (as multilingual models sample languages)."""
    powered = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    return powered / powered.sum()


@dataclass(frozen=True)
class MixSchedule:
    """Weights from `start` to `end` over the run: constant, linear, cosine, or a step at `switch`."""

    start: np.ndarray
    end: np.ndarray | None = None
    shape: str = "constant"
    switch: float = 0.5

    def at(self, progress: float) -> np.ndarray:
        if self.end is None or self.shape == "constant":
            return self.start
        if self.shape == "step":
            return self.end if progress >= self.switch else self.start
        share = 1.0 - decay_shape(progress, self.shape)  # 0 at the start, 1 at the end
        weights = self.start + (self.end - self.start) * share
        return weights / weights.sum()


def slot_uniforms(seed: int, step: int, count: int) -> np.ndarray:
    """A uniform in [0, 1) per slot of a step: a hash of (seed, step, slot)."""
    key = mix32(mix32(np.uint64((seed & _MASK32) ^ 0x51ED270B)) ^ np.uint64(step & _MASK32))
    slots = np.arange(count, dtype=np.uint64)
    return (mix32(mix32(slots ^ key) ^ np.uint64(0x2545F491)) >> np.uint64(8)).astype(np.float64) / float(1 << 24)


def sources_of(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Which source each slot draws from: the uniform against the cumulative weights."""
    edges = np.cumsum(weights)
    edges[-1] = 1.0
    return np.minimum(np.searchsorted(edges, uniforms, side="right"), len(weights) - 1)


class WindowMix:
    """The windows of several sources as one numbering: source s's window w is `offsets[s] + w`,
    so that masks (hashed by window) differ from source to source. One source is itself."""

    def __init__(self, names: list[str], windows: list[Windows]):
        self.names, self.parts = names, windows
        self.offsets = np.concatenate([[0], np.cumsum([len(w) for w in windows])]).astype(np.int64)
        self.vocab, self.seq_len = windows[0].vocab, windows[0].seq_len

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def has_word_starts(self) -> bool:
        return all(w.has_word_starts for w in self.parts)

    def batch(self, indices: np.ndarray):
        """The windows `indices` (global numbers), framed and padded, in that order."""
        from unmask.data.windows import WindowBatch

        if len(self.parts) == 1:
            return self.parts[0].batch(indices)
        source = np.searchsorted(self.offsets, indices, side="right") - 1
        rows = [None] * len(indices)
        for s in np.unique(source).tolist():
            where = np.nonzero(source == s)[0]
            part = self.parts[s].batch(indices[where] - self.offsets[s])
            for k, row in enumerate(where.tolist()):
                rows[row] = (part.input_ids[k], part.attention_mask[k], None if part.word_starts is None else part.word_starts[k])
        starts = None if any(r[2] is None for r in rows) else np.stack([r[2] for r in rows])
        return WindowBatch(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), starts)


class MixtureSampler:
    """Hands out global window numbers for each step: slots to sources by weight, then each
    source's windows in its own seeded order."""

    def __init__(self, mix: WindowMix, seed: int, schedule: MixSchedule, positions: list[DataPosition] | None = None):
        self.mix, self.seed, self.schedule = mix, seed, schedule
        self.samplers = [
            WindowSampler(len(part), seed + 7919 * number, positions[number] if positions and number < len(positions) else None)
            for number, part in enumerate(mix.parts)
        ]

    @property
    def positions(self) -> list[DataPosition]:
        return [s.position for s in self.samplers]

    @property
    def position(self) -> DataPosition:
        """The first source's position (the epoch a metrics line shows)."""
        return self.samplers[0].position

    def mark(self) -> list[DataPosition]:
        """A copy of every source's position, to `rewind` to (the positions themselves move as windows are taken)."""
        return [DataPosition(p.epoch, p.position) for p in self.positions]

    def rewind(self, positions: list[DataPosition]) -> None:
        """Go back to where `mark` was called: a dropped step's windows are taken again on resume."""
        for sampler, where in zip(self.samplers, positions):
            sampler.position = DataPosition(where.epoch, where.position)

    def take(self, count: int, step: int, progress: float) -> tuple[np.ndarray, np.ndarray]:
        """The step's `count` global window numbers and each one's epoch (of its source)."""
        chosen = sources_of(self.schedule.at(progress), slot_uniforms(self.seed, step, count))
        indices, epochs = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
        for s, sampler in enumerate(self.samplers):
            where = np.nonzero(chosen == s)[0]
            if len(where):
                local, epoch = sampler.take(len(where))
                indices[where], epochs[where] = local + self.mix.offsets[s], epoch
        return indices, epochs

    def expected_epochs(self, steps: int, per_step: int) -> list[float]:
        """Passes over each source a run of `steps` makes, at the schedule's mean weights."""
        mean = np.mean([self.schedule.at(p) for p in np.linspace(0, 1, 21)], axis=0)
        return [steps * per_step * w / max(len(part), 1) for w, part in zip(mean, self.mix.parts)]
