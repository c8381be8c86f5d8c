"""The adapter-aware router: one address in front of a base model's pods that sends each
request to a pod holding its adapter, least loaded first, and streams the answer back."""
