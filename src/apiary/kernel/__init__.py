"""apiary.kernel: what the running kernel offers (feature probes, preflight). May import apiary.loader only."""
