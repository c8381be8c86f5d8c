"""Settings of one runtime pod, declared once for flags, environment and docs.

`EngineConfig` is what the engine needs (model, memory, batching, adapters);
`ServerConfig` is what the HTTP layer adds (address, auth, queue, start-up adapters).
Both are validated in `__post_init__` with `ValueError`, never `assert`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loraplex.settings import setting

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZE = ("none", "int8", "int4", "nf4", "gguf")
LOAD_FORMATS = ("auto", "dummy")
LORA_BACKENDS = ("auto", "triton", "cpu", "torch")  # auto: see EngineConfig.lora_backend


def default_cache_dir() -> str:
    return os.environ.get("LORAPLEX_CACHE", str(Path.home() / ".cache" / "loraplex"))


@dataclass(slots=True)
class EngineConfig:
    model: str = setting(DEFAULT_MODEL, help="model source: builtin:NAME, a folder, a .gguf "
                         "file, hf://org/repo, or a shape name with --load-format dummy")
    revision: str = setting("", help="revision of an hf:// model")
    dtype: str = setting("auto", help="weight dtype (auto: bfloat16 on CUDA and on CPUs with "
                         "native bf16 arithmetic, AVX512-BF16 or AMX; float32 on other CPUs)",
                         choices=DTYPES)
    load_format: str = setting("auto", help="auto: read weights; dummy: random weights",
                               choices=LOAD_FORMATS)
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N")
    cpu_threads: int = setting(0, help="torch threads of the serving engine's thread on a CPU "
                               "(0: every core it may use, a cgroup CPU limit included)")
    quantize: str = setting(
        "none", help="weight-only quantization of the decoder's linears at load: none, int8 "
        "(per output channel), int4 (per group, round to nearest), nf4 (QLoRA's 4-bit normal "
        "float, one absmax per 64 inputs, as bitsandbytes stores it), gguf (serve a GGUF "
        "model's own Q4_0/Q4_1 blocks as int4; other types dequantized). On a CPU, int8, "
        "int4 and nf4 also hold the LM head in int8 (per output channel), a tied one serving "
        "the token lookups; otherwise tokens are looked up in int8 rows (a GGUF's own Q8_0)",
        choices=QUANTIZE)
    quantize_group_size: int = setting(32, help="inputs per int4 group (32, 64, 128, 256)")
    cache_dir: str = setting(factory=default_cache_dir,
                             help="cache folder for converted models and adapters")
    seed: int = setting(0, help="seed for dummy weights and unseeded sampling")
    max_model_len: int = setting(0, help="context length (0: the model's own)")
    max_num_seqs: int = setting(256, help="most sequences in one batch")
    max_num_batched_tokens: int = setting(8192, help="most tokens in one forward pass "
                                          "(prefill is chunked to fit)")
    block_size: int = setting(16, help="tokens per paged KV block")
    kv_cache_bytes: int = setting(0, help="KV cache budget in bytes (0: use --kv-cache-fraction)")
    kv_cache_fraction: float = setting(
        0.85, help="fraction of the device memory free after loading the weights that the "
        "engine plans with: adapter slot pool, activations, sampler, attention scratch, CUDA "
        "graphs, then the KV cache from the rest (on CPU: of available RAM, KV cache capped "
        "at 4 GiB)")
    enforce_eager: bool = setting(False, help="never capture CUDA graphs")
    cuda_graph_max_batch: int = setting(0, help="largest decode batch captured as a CUDA "
                                        "graph at start-up (0: --max-num-seqs); larger "
                                        "decode steps run eagerly")
    prefix_caching: bool = setting(True, help="reuse the KV blocks of prompt prefixes already "
                                   "computed under the same adapter")
    lora_backend: str = setting(
        "auto", help="auto (triton on CUDA; on a CPU the compiled kernel, built on first use "
        "with the machine's C compiler, or torch where none works), triton, cpu, torch",
        choices=LORA_BACKENDS)
    max_lora_rank: int = setting(64, help="largest adapter rank accepted")
    device_slots: int = setting(32, help="adapters resident on the device at once")
    host_bytes: int = setting(8 << 30, help="host RAM budget for adapter weights")
    disk_bytes: int = setting(64 << 30, help="disk cache budget for downloaded adapters")
    load_workers: int = setting(4, help="adapter loads from disk (parse, pin) that run in "
                                "parallel")
    download_workers: int = setting(4, help="adapter downloads (hf://, s3://) that run in "
                                    "parallel, apart from the loads from disk")
    adapter_connect_timeout_s: float = setting(
        10.0, help="seconds an adapter download may wait to connect to its source")
    adapter_read_timeout_s: float = setting(
        30.0, help="seconds an adapter download may wait for the next bytes")
    adapter_load_deadline_s: float = setting(
        300.0, help="seconds after which a load that has not finished fails")
    dynamic_failure_ttl_s: float = setting(
        30.0, help="seconds a failed adapter that a request named is remembered (its "
        "requests fail at once); afterwards it is forgotten and may be tried again")
    adapter_time_slice_s: float = setting(
        2.0, help="seconds an adapter keeps admitting requests to its device slot while "
        "adapters without a slot wait (LoRAX's adapter cycle time)")
    allow_dynamic_adapters: list[str] = setting(
        factory=list, help="source prefixes a request may name in adapter_source/adapter_id "
        "(e.g. hf://my-org/, s3://bucket/); none by default")

    def __post_init__(self) -> None:
        positive = ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_lora_rank",
                    "device_slots", "load_workers", "quantize_group_size", "download_workers",
                    "adapter_connect_timeout_s", "adapter_read_timeout_s",
                    "adapter_load_deadline_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.kv_cache_fraction <= 1:
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        for name in ("cpu_threads", "kv_cache_bytes", "max_model_len", "host_bytes", "disk_bytes",
                     "adapter_time_slice_s", "dynamic_failure_ttl_s", "cuda_graph_max_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")


@dataclass(slots=True)
class ServerConfig:
    host: str = setting("0.0.0.0", help="address to listen on")
    port: int = setting(8080, help="port to listen on")
    adapter: list[str] = setting(factory=list, help="adapter to register at start: NAME=SOURCE")
    adapters_file: str = setting("", help="YAML file of adapters to register at start "
                                 "(a list of {name, source, pinned?, preload?})")
    admin_token: str = setting("", help="bearer token for /v1/adapters (LORAPLEX_ADMIN_TOKEN); "
                               "empty: only loopback clients may use the admin API")
    max_waiting: int = setting(1024, help="requests that may wait for a batch slot; "
                               "more get 429")
    max_input_length: int = setting(0, help="longest prompt in tokens (0: context length - 1)")
    max_best_of: int = setting(4, help="largest best_of / n")
    max_stop_sequences: int = setting(8, help="most stop sequences per request")
    grammar_cache_bytes: int = setting(256 << 20, help="memory for compiled output "
                                       "constraints (structured output), LRU beyond it")
    shutdown_grace_s: float = setting(30.0, help="seconds SIGTERM waits for in-flight requests")
    max_request_bytes: int = setting(16 << 20, help="largest request body; larger ones get 413 "
                                     "unread")
    max_connections: int = setting(0, help="open connections beyond which new ones get 503 "
                                   "before anything is read (0: no limit)")
    max_adapter_metric_labels: int = setting(
        256, help="adapters with per-adapter metric series of their own (the rest share "
        "adapter=\"__other__\")")
    served_model_name: str = setting("", help="model id shown to clients (default: --model)")
    log_level: str = setting("info", help="log level", choices=("debug", "info", "warning",
                                                                "error"))

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("max_waiting", "max_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be positive, got {self.max_request_bytes}")
        for item in self.adapter:
            if "=" not in item or not item.split("=", 1)[0]:
                raise ValueError(f"--adapter takes NAME=SOURCE, got {item!r}")
