"""apiary.observe.tetragon: Tetragon's event shapes — process JSON (events), compact lines, event filters.

May import apiary.observe (process cache, clock, colour) and apiary.textutil; nothing that touches the kernel."""
