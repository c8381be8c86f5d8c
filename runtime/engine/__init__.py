"""Continuous-batching engine: sequences, paged KV blocks, scheduler, model runner."""
