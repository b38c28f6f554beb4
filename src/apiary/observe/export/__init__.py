"""Event and flow export (pure parts): field masks, rate limiting, rotated JSON-lines files, settings.

Tetragon's ``--export-*`` options and Cilium's ``--hubble-export-*`` options; the agent's side (the bus
subscriber, the writer thread, the OTLP sink) is :mod:`apiary.agent.export`.
"""
