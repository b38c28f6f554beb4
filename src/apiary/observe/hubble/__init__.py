"""apiary.observe.hubble: Hubble's flow shapes — enums, the flow builder, printers, filters, metrics."""
