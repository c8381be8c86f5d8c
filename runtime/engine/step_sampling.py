"""A step's sampling inputs built on the host in bulk, and its results in one copy back.

`StepSampling.tensors` turns the sampling sequences' parameters into the `SamplingTensors`
of the batch (Python lists, copied to the device without waiting), with the grammar masks
of constrained sequences and the logit biases and token masks of the rows that ask for
them (`logit_bias`, `min_tokens`, `allowed_token_ids`). After the sampler,
`StepSampling.finish` counts the sampled tokens into the penalty tables on the device and
makes the step's single device-to-host copy: ids, logprobs and alternatives packed into
one tensor, read back once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from loraplex.runtime.engine.penalty_counts import PenaltyCounts
from loraplex.runtime.engine.request import SamplingParams
from loraplex.runtime.engine.sequence import Sequence
from loraplex.runtime.layers.grammar_mask import GrammarBitmask, TokenMask
from loraplex.runtime.layers.sampler import SamplerOutput, SamplingTensors
from loraplex.runtime.layers.token_bias import TokenBias


@dataclass(slots=True)
class SampledToken:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # alternatives, most likely first


def copy_to_host(tensor: torch.Tensor) -> list:
    """The tensor's values as Python lists: the one place a step waits for the device."""
    if tensor.device.type == "cpu":
        return tensor.tolist()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host.tolist()


def build_token_bias(params: list[SamplingParams], num_generated: list[int],
                     end_token_ids: Iterable[int], vocab_size: int,
                     device: torch.device) -> TokenBias | None:
    """The batch's table, or None when no row asks for any of it (the common case)."""
    end_ids = sorted(token for token in end_token_ids if token < vocab_size)
    rows: list[int] = []
    token_ids: list[int] = []
    values: list[float] = []
    allowed_rows: list[int] = []
    for row, (param, generated) in enumerate(zip(params, num_generated, strict=True)):
        for token, bias in param.logit_bias.items():
            if token < vocab_size:
                rows.append(row)
                token_ids.append(token)
                values.append(bias)
        if generated < param.min_tokens:
            rows += [row] * len(end_ids)
            token_ids += end_ids
            values += [float("-inf")] * len(end_ids)
        if param.allowed_token_ids is not None:
            allowed_rows.append(row)
    if not rows and not allowed_rows:
        return None

    def to_device(values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    bias = TokenBias(to_device(rows, torch.int64), to_device(token_ids, torch.int64),
                     to_device(values, torch.float32))
    if allowed_rows:
        allowed = torch.zeros(len(allowed_rows), vocab_size, dtype=torch.bool)  # [R, vocab]
        for index, row in enumerate(allowed_rows):
            ids = [token for token in params[row].allowed_token_ids or () if token < vocab_size]
            allowed[index, ids] = True
        bias.allowed_rows = to_device(allowed_rows, torch.int64)
        bias.allowed = allowed.to(device, non_blocking=True)
    return bias


class StepSampling:
    def __init__(self, vocab_size: int, device: torch.device,
                 end_token_ids: Iterable[int] = ()) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.end_token_ids = frozenset(end_token_ids)  # blocked before a row's min_tokens
        self.penalty_counts = PenaltyCounts(vocab_size, device)
        self._table_rows: list[int] = []
        self._grammar_bitmask: GrammarBitmask | None = None  # built for the first grammar

    def tensors(self, seqs: list[Sequence]) -> SamplingTensors:
        params = [seq.params for seq in seqs]
        greedy = [p.greedy for p in params]
        vocab = self.vocab_size
        top_ks = [vocab if g or not p.top_k else p.top_k for p, g in zip(params, greedy,
                                                                         strict=True)]
        top_ps = [1.0 if g else p.top_p for p, g in zip(params, greedy, strict=True)]
        penalties, self._table_rows = self.penalty_counts.batch(seqs)
        return SamplingTensors(
            temperatures=self._tensor([1.0 if g else p.temperature
                                       for p, g in zip(params, greedy, strict=True)],
                                      torch.float32),
            greedy=self._tensor(greedy, torch.bool),
            seeds=self._tensor([seq.seed or 0 for seq in seqs], torch.int64),
            token_indices=self._tensor([seq.num_generated_tokens for seq in seqs],
                                       torch.int64),
            top_ks=self._tensor(top_ks, torch.int64) if min(top_ks) < vocab else None,
            top_ps=self._tensor(top_ps, torch.float32) if min(top_ps) < 1.0 else None,
            penalties=penalties, token_mask=self._token_mask(seqs),
            token_bias=build_token_bias(params, [seq.num_generated_tokens for seq in seqs],
                                        self.end_token_ids, vocab, self.device),
            all_greedy=all(greedy),
            max_num_logprobs=max(p.logprobs for p in params))

    def finish(self, tensors: SamplingTensors, output: SamplerOutput) -> list[SampledToken]:
        """Record the sampled tokens on the device, then read the step's results back."""
        if tensors.penalties is not None:
            self.penalty_counts.record(tensors.penalties, self._table_rows, output.token_ids)
        k = 0 if output.top_token_ids is None else output.top_token_ids.shape[1]
        rows = copy_to_host(output.packed())  # [N][2 + 2k]
        return [SampledToken(int(row[0]), row[1],
                             [(int(i), lp) for i, lp in zip(row[2:2 + k], row[2 + k:],
                                                             strict=True)])
                for row in rows]

    def _token_mask(self, seqs: list[Sequence]) -> TokenMask | None:
        if all(seq.grammar is None for seq in seqs):
            return None
        if self._grammar_bitmask is None:
            self._grammar_bitmask = GrammarBitmask(self.vocab_size, len(seqs), self.device)
        return self._grammar_bitmask.build([seq.grammar for seq in seqs])

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)
