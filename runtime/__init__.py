"""The GPU pod: model, engine, LoRA kernels, adapter tiers, HTTP server and router."""
