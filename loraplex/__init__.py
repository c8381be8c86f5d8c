"""loraplex: thousands of LoRA fine-tunes of one base LLM on a few GPUs, on Kubernetes.

`loraplex.runtime` is the GPU pod (engine, kernels, adapters, HTTP server, router);
`loraplex.operator` is the Kubernetes operator. This top package holds only what both
share: the command line and the settings machinery, so that it imports without torch.
"""

__version__ = "0.1.0"
