"""apiary.observe.hubble: Hubble's flow shapes — enums, the flow builder, the ring, printers, filters, metrics.

May import apiary.observe (clock, colour), apiary.policy.types and apiary.textutil; nothing that touches the kernel."""
