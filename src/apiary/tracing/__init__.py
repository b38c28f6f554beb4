"""apiary.tracing: TracingPolicy (Tetragon's format), pure: models, strict loader, and the compiler that realises a
policy on a kernel described by an :class:`apiary.kernel.features.KernelFeatures` value (no I/O). May import
apiary.policy and apiary.kernel.features only. Module map and realisation table: docs/tracing.md."""
