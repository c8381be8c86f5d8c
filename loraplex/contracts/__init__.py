"""Wire contracts: whatever two loraplex processes exchange, defined once.

The runtime pod answers the admin API (`adapters`), the operator and the router read it;
the operator writes the placement table (`placements`) and the router reads it; the router
and the operator read the pod's queue gauges (`metric_names`). Each side imports the same
models from here, so no side spells a state or parses a payload on its own. Nothing here
imports torch or any other part of loraplex: the operator image carries it unchanged.
"""
