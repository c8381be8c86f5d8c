"""Structured output: what a request constrains its output to, and the compiled grammars.

`grammar_spec` names a constraint (JSON schema, any JSON, regex, choice, EBNF) as a
hashable key; `grammar_cache` compiles it with xgrammar off the event loop and the engine
loop, keeps compiled grammars in an LRU with a byte budget, and refuses what cannot compile.
The engine masks each constrained row's logits with its own matcher (`layers/grammar_mask`).
"""
