"""Model definitions and weight loading: Hugging Face folders, GGUF, builtin, dummy."""
