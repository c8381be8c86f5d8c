"""loraplex: thousands of LoRA fine-tunes of one base LLM on a few GPUs, on Kubernetes.

`loraplex.runtime` is the GPU pod (engine, kernels, adapters, HTTP server),
`loraplex.router` the in-cluster router, `loraplex.operator` the Kubernetes operator. This
top package holds only what they share: the command line, the settings machinery and the
wire contracts (`loraplex.contracts`), so that it imports without torch.
"""

__version__ = "0.1.0"
