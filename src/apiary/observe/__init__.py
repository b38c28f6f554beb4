"""apiary.observe: pure event shaping — process cache, raw records, /proc scan, clock, terminal colour; Hubble
flows in ``hubble/`` and Tetragon events in ``tetragon/``. May import apiary.policy (types) and apiary.textutil only."""
