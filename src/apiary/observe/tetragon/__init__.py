"""apiary.observe.tetragon: Tetragon's event shapes — process JSON, hook-event args, compact lines, event filters."""
