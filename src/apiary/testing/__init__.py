"""pytest helpers shipped with apiary: kernel gates and an agent that cleans up after itself."""
