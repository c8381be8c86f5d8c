"""The peer of `bench.adapters`: transformers + PEFT's mixed-adapter batch, in process.

`PeftBatch` loads transformers' model from the folder our engine loaded, adds each adapter
from the same folder our engine reads, and times one left-padded greedy `generate` of
the same prompt ids with `adapter_names` (PEFT's mixed batch; "__base__" for rows with no
adapter), in the dtype our engine serves (PEFT keeps fp32 adapter weights in fp32 on a
bf16 base, its default). Every row must produce exactly `new_tokens` new tokens: EOS is
neither a stop nor excluded (`min_new_tokens` = `max_new_tokens`), and the count is checked, so a
faster-looking run that stopped early cannot pass for a fast one.

`plain_generate_seconds` is the check on this harness: the plain loop a PEFT user
writes (tokenizer padding, `PeftModel.generate(**inputs, adapter_names=...)`), no helper
of ours in between; `bench.adapters --check-peft` prints both on the same batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

BASE_NAME = "__base__"  # PEFT's adapter name for rows that use no adapter


class PeftBatch:
    def __init__(self, folder: Path, pad_id: int, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModelForCausalLM

        self.base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        self.model = None  # a PeftModel once an adapter is added
        self.loaded: set[str] = set()
        self.pad_id = pad_id

    def add_adapters(self, adapters: dict[str, Path]) -> None:
        """Load each adapter (name -> PEFT folder) once."""
        from peft import PeftModel

        for name, folder in adapters.items():
            if name in self.loaded:
                continue
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, folder, adapter_name=name)
            else:
                self.model.load_adapter(folder, adapter_name=name)
            self.loaded.add(name)

    def time_batch(self, prompts: list[list[int]], adapters: list[str | None],
                   new_tokens: int) -> float:
        """Seconds for one greedy `generate` of every prompt, row i on adapters[i]."""
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        options = {"do_sample": False, "max_new_tokens": new_tokens,
                   "min_new_tokens": new_tokens, "pad_token_id": self.pad_id}
        model = self.base
        if any(adapters):
            model = self.model
            options["adapter_names"] = [name or BASE_NAME for name in adapters]
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    **options)
        elapsed = time.perf_counter() - started
        if output.shape[1] - width != new_tokens:
            raise RuntimeError(f"PEFT generated {output.shape[1] - width} tokens per row, "
                               f"expected {new_tokens}")
        return elapsed


def plain_generate_seconds(folder: Path, tokenizer, texts: list[str],
                           adapters: dict[str, Path], names: list[str],
                           new_tokens: int, dtype: torch.dtype = torch.float32) -> float:
    """The textbook PEFT mixed batch, timed after one warm-up call: seconds per batch."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    first, *rest = adapters
    model = PeftModel.from_pretrained(base, adapters[first], adapter_name=first)
    for name in rest:
        model.load_adapter(adapters[name], adapter_name=name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    options = {"do_sample": False, "max_new_tokens": new_tokens,
               "min_new_tokens": new_tokens, "adapter_names": names}
    with torch.inference_mode():
        model.generate(**inputs, **{**options, "max_new_tokens": 2, "min_new_tokens": 2})
        started = time.perf_counter()
        model.generate(**inputs, **options)
        return time.perf_counter() - started
