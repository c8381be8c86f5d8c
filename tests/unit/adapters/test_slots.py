"""The device slot pool: layout the kernels read, rank padding, overwrite and clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import GROUP_NAMES, MODULE_PLACES, LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights
from loraplex.runtime.kernels.checks import is_rank_major


def slot_delta(pool: DeviceSlotPool, slot: int, layer: int, module: str,
               x: torch.Tensor) -> torch.Tensor:
    """What a kernel computes for one module from the stacked buffers, reading up to the
    slot's rank: x @ A_slice.T @ B_rows.T."""
    _, group_name, index = MODULE_PLACES[module]
    lora_a, lora_b = pool.group(layer, group_name)  # [S, n, R, d_in], [S, d_out, R]
    rank = pool.ranks_host[slot]
    offsets = pool.target.slice_offsets(group_name)
    shrunk = x @ lora_a[slot, index, :rank].T  # [T, r]
    return shrunk @ lora_b[slot, offsets[index]:offsets[index + 1], :rank].T  # [T, d_out]


def adapter(tmp_path: Path, target: LoraTargetShapes, name: str, **kwargs) -> AdapterWeights:
    folder = write_random_adapter(tmp_path / name, target, **kwargs)
    return load_peft_adapter(folder, target, max_rank=16)


def test_slot_buffers_reproduce_each_module(tmp_path: Path, smol_target) -> None:
    pool = DeviceSlotPool(smol_target, num_slots=3, max_rank=16)
    mixed = adapter(tmp_path, smol_target, "mixed", rank=8, seed=1,
                    target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                    rank_pattern={"v_proj": 3, "down_proj": 12})
    pool.write(1, mixed)
    assert pool.ranks_host == [0, 12, 0]
    assert pool.ranks.tolist() == [0, 12, 0]
    x = torch.randn(4, 1536)
    for layer in range(smol_target.num_layers):
        for module in MODULE_PLACES:
            d_in, d_out = smol_target.module_shape(module)
            got = slot_delta(pool, 1, layer, module, x[:, :d_in])
            parsed = mixed.module(layer, module)
            if parsed is None:  # k_proj, gate_proj: the adapter lacks them → zero
                assert torch.count_nonzero(got) == 0
                continue
            expected = x[:, :d_in] @ parsed[0].T @ parsed[1].T
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for name in GROUP_NAMES:  # neighbours untouched
        lora_a, lora_b = pool.group(0, name)
        assert torch.count_nonzero(lora_a[0]) == torch.count_nonzero(lora_a[2]) == 0
        assert torch.count_nonzero(lora_b[0]) == torch.count_nonzero(lora_b[2]) == 0


def test_overwrite_with_a_smaller_adapter_leaves_nothing_behind(tmp_path: Path,
                                                              smol_target) -> None:
    pool = DeviceSlotPool(smol_target, num_slots=2, max_rank=16)
    pool.write(0, adapter(tmp_path, smol_target, "big", rank=16, seed=2))
    small = adapter(tmp_path, smol_target, "small", rank=2, seed=3, target_modules=["k_proj"])
    pool.write(0, small)
    assert pool.ranks_host[0] == 2
    lora_a, lora_b = pool.group(1, "qkv")
    assert torch.count_nonzero(lora_a[0, :, 2:]) == 0 and torch.count_nonzero(lora_b[0, :, 2:]) == 0
    assert torch.count_nonzero(lora_a[0, 0]) == 0  # q slice: k-only adapter
    for name in ("o", "gate_up", "down"):
        assert all(torch.count_nonzero(t[0]) == 0 for t in pool.group(0, name))
    pool.clear(0)
    assert pool.ranks_host[0] == 0
    assert all(torch.count_nonzero(t) == 0 for t in pool.lora_a.values())


def test_group_views_are_the_kernel_layout(smol_target) -> None:
    pool = DeviceSlotPool(smol_target, num_slots=5, max_rank=8, dtype=torch.float16)
    lora_a, lora_b = pool.group(1, "qkv")
    assert lora_a.shape == (5, 3, 8, 576) and lora_b.shape == (5, 576 + 2 * 192, 8)
    assert lora_a.is_contiguous() and is_rank_major(lora_b)
    assert lora_a.dtype == torch.float16 and pool.ranks.dtype == torch.int32
    allocated = sum(t.numel() * t.element_size()
                    for t in [*pool.lora_a.values(), *pool.lora_b.values()])
    assert pool.size_bytes == allocated


def test_writes_are_checked(tmp_path: Path, smol_target) -> None:
    pool = DeviceSlotPool(smol_target, num_slots=2, max_rank=4)
    weights = adapter(tmp_path, smol_target, "r8", rank=8)
    with pytest.raises(ValueError, match="slot 2 is outside 0..1"):
        pool.write(2, weights)
    with pytest.raises(ValueError, match="rank 8 exceeds the pool's max rank 4"):
        pool.write(0, weights)
    other = LoraTargetShapes(2, 64, 4, 2, 16, 96)
    with pytest.raises(ValueError, match="do not match"):
        pool.write(0, adapter(tmp_path, other, "other", rank=2))
    assert pool.ranks_host == [0, 0]


def test_host_weights_in_the_serving_dtype_fill_bf16_slots_exactly(tmp_path: Path,
                                                                   smol_target) -> None:
    folder = write_random_adapter(tmp_path / "a", smol_target, 8, seed=3)
    full = load_peft_adapter(folder, smol_target, max_rank=16)
    half = load_peft_adapter(folder, smol_target, max_rank=16, dtype=torch.bfloat16)
    assert half.size_bytes * 2 == full.size_bytes  # half the host RAM and PCIe bytes
    for name, group in half.groups.items():
        assert group.a.dtype == group.b.dtype == torch.bfloat16
        assert group.b.transpose(1, 2).is_contiguous()  # rank-major, as the slot holds it
        assert torch.equal(group.a, full.groups[name].a.to(torch.bfloat16))
        assert torch.equal(group.b, full.groups[name].b.to(torch.bfloat16))
    pool = DeviceSlotPool(smol_target, num_slots=2, max_rank=16, dtype=torch.bfloat16)
    pool.write(1, half)
    lora_a, lora_b = half.module(0, "q_proj")
    pool_a, pool_b = pool.group(0, "qkv")
    assert torch.equal(pool_a[1, 0, :8], lora_a)
    assert torch.equal(pool_b[1, :lora_b.shape[0], :8], lora_b)


@pytest.mark.gpu
def test_cuda_copy_is_asynchronous_and_exact(tmp_path: Path, smol_target) -> None:
    pool = DeviceSlotPool(smol_target, num_slots=2, max_rank=16, device="cuda")
    folder = write_random_adapter(tmp_path / "a", smol_target, 8, seed=1)
    weights = load_peft_adapter(folder, smol_target, max_rank=16, pin_memory=True)
    assert weights.groups["qkv"].a.is_pinned() and weights.groups["qkv"].b.is_pinned()
    copy = pool.write(1, weights, after=pool.fence())
    torch.cuda.synchronize()
    assert copy.done()
    x = torch.randn(3, 576)
    got = slot_delta(pool, 1, 0, "q_proj", x.cuda()).cpu()
    lora_a, lora_b = weights.module(0, "q_proj")
    torch.testing.assert_close(got, x @ lora_a.T @ lora_b.T, rtol=1e-4, atol=1e-4)


def test_kernels_read_the_pool_as_written(tmp_path: Path, smol_target) -> None:
    """The engine's LoRA op, fed the pool's buffers, applies each row's own adapter."""
    from loraplex.runtime.kernels import LoraSegments, lora_apply

    pool = DeviceSlotPool(smol_target, num_slots=3, max_rank=16)
    first = adapter(tmp_path, smol_target, "first", rank=16, seed=4)
    second = adapter(tmp_path, smol_target, "second", rank=4, seed=5,
                     target_modules=["k_proj", "up_proj"], rank_pattern={"up_proj": 2})
    pool.write(0, first)
    pool.write(2, second)
    row_slots = [2, 0, -1, 0, 2, 2]
    segments = LoraSegments.from_token_slots(row_slots)
    weights = {0: first, 2: second}
    for layer in range(smol_target.num_layers):
        for name in GROUP_NAMES:
            group = smol_target.group(name)
            x = torch.randn(len(row_slots), group.d_in)  # [T, d_in]
            y = torch.zeros(len(row_slots), group.d_out)  # [T, d_out_total]
            lora_a, lora_b = pool.group(layer, name)
            lora_apply(y, x, lora_a, lora_b, group.offsets, segments, pool.ranks,
                       backend="torch")
            expected = torch.zeros_like(y)
            for row, slot in enumerate(row_slots):
                for index, module in enumerate(group.modules):
                    parsed = weights[slot].module(layer, module) if slot >= 0 else None
                    if parsed is not None:
                        columns = slice(group.offsets[index], group.offsets[index + 1])
                        expected[row, columns] = x[row] @ parsed[0].T @ parsed[1].T
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_a_cpu_pool_commits_memory_only_for_what_adapters_write(tmp_path: Path,
                                                                 smol_target) -> None:
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    weights = adapter(tmp_path, smol_target, "small", rank=8, seed=4)
    before = process.memory_info().rss
    pool = DeviceSlotPool(smol_target, num_slots=128, max_rank=64)
    assert pool.size_bytes > 512 << 20
    assert process.memory_info().rss - before < 16 << 20
    before = process.memory_info().rss
    for slot in range(4):
        pool.write(slot, weights)
    written = 4 * DeviceSlotPool.bytes_needed(smol_target, 1, 8, torch.float32)
    assert process.memory_info().rss - before < 2 * written + (16 << 20)
    assert written * 32 < pool.size_bytes  # what the bound above tells apart
