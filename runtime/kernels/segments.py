"""Which rows of a flattened batch use which adapter slot, prepared once per step.

The engine builds one `LoraSegments` per forward pass and hands it to every LoRA layer, so
everything derived from it (the row grouping of the torch path, the tiles of the Triton
kernels) is computed once per step and cached on the object, not once per layer.

A segment is a run of rows `indptr[g]:indptr[g+1]` that all use slot `slots[g]`; slot -1
means "no adapter" (the rows are skipped). Segments may be empty, and one slot may own
several segments: both paths group rows by slot, so weights are read once per distinct
slot and step, whatever the order of the rows. `fixed_tile_lists` lays the same tiles out
in lists of a fixed size, for the persistent buffers of a captured decode step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

NO_ADAPTER = -1
T = TypeVar("T")


@dataclass(frozen=True)
class SlotRows:
    """The rows of one slot, as `start:end` of the slot-grouped row order."""

    slot: int
    start: int
    end: int


@dataclass(frozen=True)
class RowGrouping:
    """Rows with an adapter, grouped by slot (slots in order of first appearance).

    `permutation` maps grouped position -> batch row; it is None when every slot's rows
    already form one run of the batch in that order, so grouped positions are batch rows.
    """

    groups: tuple[SlotRows, ...]
    permutation: torch.Tensor | None  # int64 [num_lora_rows]


@dataclass(frozen=True)
class KernelTiles:
    """Work items of the Triton kernels: up to `block_m` rows of one slot each."""

    sorted_rows: torch.Tensor  # int32 [num_lora_rows], batch rows grouped by slot
    tile_info: torch.Tensor  # int32 [num_tiles, 3]: (slot, start, end) into sorted_rows
    num_tiles: int


@dataclass(frozen=True, eq=False)
class LoraSegments:
    indptr: torch.Tensor  # int32 [G+1], on the device
    slots: torch.Tensor  # int32 [G], on the device; -1 = no adapter
    indptr_list: tuple[int, ...]
    slot_list: tuple[int, ...]
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        num_segments = len(self.slot_list)
        if len(self.indptr_list) != num_segments + 1:
            raise ValueError(
                f"indptr needs {num_segments + 1} entries for {num_segments} segments, "
                f"got {len(self.indptr_list)}"
            )
        if self.indptr_list[0] != 0:
            raise ValueError(f"indptr must start at 0, got {self.indptr_list[0]}")
        if any(b < a for a, b in itertools.pairwise(self.indptr_list)):
            raise ValueError(f"indptr must not decrease: {list(self.indptr_list)}")
        if any(slot < NO_ADAPTER for slot in self.slot_list):
            raise ValueError(f"slots must be >= -1, got {list(self.slot_list)}")
        if tuple(self.indptr.shape) != (num_segments + 1,) or tuple(self.slots.shape) != (
            num_segments,
        ):
            raise ValueError("indptr/slots tensors do not match indptr_list/slot_list")

    @classmethod
    def from_lists(
        cls, indptr: Sequence[int], slots: Sequence[int], device: torch.device | str = "cpu"
    ) -> LoraSegments:
        indptr_list = tuple(int(i) for i in indptr)
        slot_list = tuple(int(s) for s in slots)
        # one host->device copy for both
        packed = torch.tensor(indptr_list + slot_list, dtype=torch.int32).to(device)
        return cls(
            indptr=packed[: len(indptr_list)],
            slots=packed[len(indptr_list) :],
            indptr_list=indptr_list,
            slot_list=slot_list,
        )

    @classmethod
    def from_token_slots(
        cls, token_slots: Sequence[int], device: torch.device | str = "cpu"
    ) -> LoraSegments:
        """Run-length-encode a per-row slot list (-1 = no adapter)."""
        indptr = [0]
        slots: list[int] = []
        row = 0
        for slot, run in itertools.groupby(int(s) for s in token_slots):
            row += sum(1 for _ in run)
            indptr.append(row)
            slots.append(slot)
        return cls.from_lists(indptr, slots, device)

    @property
    def num_rows(self) -> int:
        return self.indptr_list[-1]

    @property
    def num_segments(self) -> int:
        return len(self.slot_list)

    @property
    def has_lora(self) -> bool:
        """Whether any row uses an adapter."""
        return bool(self.slot_runs())

    @property
    def max_slot(self) -> int:
        return self.memo("max_slot", lambda: max(self.slot_list, default=NO_ADAPTER))

    @property
    def max_rows_per_slot(self) -> int:
        """Rows of the busiest slot (0 without adapters)."""
        return self.memo("max_rows", lambda: max(map(len, self.slot_rows().values()), default=0))

    def memo(self, key: Hashable, build: Callable[[], T]) -> T:
        """`build()` once per segments object (i.e. once per step) and `key`."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def slot_runs(self) -> dict[int, list[tuple[int, int]]]:
        """Non-empty row runs `(start, end)` of each slot, slots in order of first appearance."""
        return self.memo("runs", self._build_runs)

    def slot_rows(self) -> dict[int, list[int]]:
        """The rows of each slot, slots in order of first appearance."""
        return self.memo(
            "rows",
            lambda: {
                slot: [row for start, end in runs for row in range(start, end)]
                for slot, runs in self.slot_runs().items()
            },
        )

    def row_grouping(self) -> RowGrouping:
        """Rows grouped by slot for the torch path (cached: built once per step)."""
        return self.memo("grouping", self._build_grouping)

    def kernel_tiles(self, block_m: int) -> KernelTiles:
        """Tiles of at most `block_m` rows of one slot for the Triton kernels (cached)."""
        return self.memo(("tiles", block_m), lambda: self._build_tiles(block_m))

    def _build_runs(self) -> dict[int, list[tuple[int, int]]]:
        runs: dict[int, list[tuple[int, int]]] = {}
        for slot, start, end in zip(
            self.slot_list, self.indptr_list, self.indptr_list[1:], strict=False
        ):
            if slot == NO_ADAPTER or end == start:
                continue
            slot_runs = runs.setdefault(slot, [])
            if slot_runs and slot_runs[-1][1] == start:
                slot_runs[-1] = (slot_runs[-1][0], end)  # adjacent runs of one slot
            else:
                slot_runs.append((start, end))
        return runs

    def _build_grouping(self) -> RowGrouping:
        runs = self.slot_runs()
        if all(len(slot_runs) == 1 for slot_runs in runs.values()):
            groups = tuple(SlotRows(slot, *slot_runs[0]) for slot, slot_runs in runs.items())
            return RowGrouping(groups=groups, permutation=None)
        groups = []
        rows: list[int] = []
        for slot, slot_rows in self.slot_rows().items():
            groups.append(SlotRows(slot, len(rows), len(rows) + len(slot_rows)))
            rows += slot_rows
        permutation = torch.tensor(rows, dtype=torch.int64).to(self.indptr.device)
        return RowGrouping(groups=tuple(groups), permutation=permutation)

    def _build_tiles(self, block_m: int) -> KernelTiles:
        rows, tiles = tile_lists(self.slot_rows(), block_m)
        # one host->device copy for both
        packed = torch.tensor(rows + tiles, dtype=torch.int32).to(self.indptr.device)
        return KernelTiles(
            sorted_rows=packed[: len(rows)],
            tile_info=packed[len(rows) :].view(-1, 3),
            num_tiles=len(tiles) // 3,
        )


def tile_lists(slot_rows: dict[int, list[int]], block_m: int) -> tuple[list[int], list[int]]:
    """(sorted_rows, flat tile_info) of `KernelTiles` for the rows of each slot."""
    if block_m <= 0:
        raise ValueError(f"block_m must be positive, got {block_m}")
    rows: list[int] = []
    tiles: list[int] = []
    for slot, rows_of_slot in slot_rows.items():
        start = len(rows)
        rows += rows_of_slot
        for tile_start in range(start, len(rows), block_m):
            tiles += (slot, tile_start, min(tile_start + block_m, len(rows)))
    return rows, tiles


def max_tiles(num_rows: int, num_slots: int, block_m: int) -> int:
    """Most tiles `num_rows` rows spread over at most `num_slots` slots can need.

    A slot of n rows needs ceil(n / block_m) <= n // block_m + 1 tiles, and each tile has
    at least one row.
    """
    return min(num_rows, num_slots + num_rows // block_m)


def fixed_tile_lists(
    row_slots: Sequence[int], block_m: int, num_tiles: int
) -> tuple[list[int], list[int]]:
    """Tiles for a batch whose metadata buffers have a fixed size (a captured CUDA graph).

    Returns sorted_rows padded with row 0 to one entry per row, and exactly `num_tiles`
    flat (slot, start, end) triples, the unused ones (-1, 0, 0): the kernels exit at once
    on slot -1, so the launch grid can be sized by `num_tiles` alone.
    """
    slot_rows: dict[int, list[int]] = {}
    for row, slot in enumerate(row_slots):
        if slot != NO_ADAPTER:
            slot_rows.setdefault(int(slot), []).append(row)
    rows, tiles = tile_lists(slot_rows, block_m)
    if len(tiles) > 3 * num_tiles:
        raise ValueError(f"{len(tiles) // 3} tiles do not fit in {num_tiles}")
    rows += [0] * (len(row_slots) - len(rows))
    tiles += [NO_ADAPTER, 0, 0] * (num_tiles - len(tiles) // 3)
    return rows, tiles
