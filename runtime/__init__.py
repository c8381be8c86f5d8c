"""The GPU pod: model, engine, LoRA kernels, adapter tiers and HTTP server."""
