"""apiary.tracing: TracingPolicy (Tetragon's format) — pure models, compiler, realisation plan."""
