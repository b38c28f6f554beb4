"""apiary.services: Kubernetes Services and EndpointSlices as apiary load-balances them (issue 10).

Pure: no kernel, no BPF, no agent. It may import apiary.policy (its Problem/PolicyError errors, the strict
YAML loader) and apiary.textutil only; the import-linter layers contract in pyproject.toml puts it beside
``apiary.observe | apiary.tracing``, so the sensors, the agent and the CLI may import it and it imports none
of them.

- :mod:`.models`: strict pydantic models of ``v1/Service`` and ``discovery.k8s.io/v1/EndpointSlice``, and
  :func:`~.models.load_services` (a file applies whole or not at all; every problem with its field path).
- :mod:`.allocate`: ClusterIP and NodePort allocation, deterministic given what is already taken.
- :mod:`.backends`: frontends and their backends (with Cilium's backend states), and the service, backend and
  reverse-NAT map entries they become (FORMATS.md 9.1).
- :mod:`.maglev`: Cilium's Maglev lookup table.
- :mod:`.format`: ``cilium service list`` rows.
"""
