"""apiary.kernel: what the running kernel offers — program/attach probes (probes.py) and the preflight report.

May import apiary.loader only."""
