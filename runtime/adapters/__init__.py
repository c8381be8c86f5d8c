"""LoRA adapters: PEFT format, sources, disk/host/device tiers and the manager that moves
adapters between them in the background while the engine keeps decoding."""
