"""The runtime pod's HTTP server: LoRAX and OpenAI protocols, adapter admin, probes, metrics.

Entry point: `launch.serve(engine_config, server_config)` (`loraplex serve`). Layout:
`app.py` assembles the routes (`lorax_routes`, `openai_completions`, `openai_chat`,
`admin_routes`, `probe_routes`); `inference.py` holds what both protocols share
(tokenizing, adapter resolution, length checks, admission, timing); `errors.py` and
`error_handlers.py` make every failure a 4xx/5xx in the caller's body shape.

Decisions clients can rely on:
- Unknown request fields are refused with 422 naming them, and JSON types are checked
  strictly (no "5" for 5); features we lack are refused by name, never ignored.
- An adapter that is not registered is 404 (`not_found`; OpenAI code `model_not_found`),
  a registered one that failed to load is 424 `generation`, overload is 429 with
  `Retry-After`, loading and draining are 503.
"""
