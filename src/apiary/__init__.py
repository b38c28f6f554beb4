"""apiary: eBPF networking, flow observability and runtime security for one Linux node."""

__version__ = "0.1.0"
