"""Stage 1: networks with the reference state-dict names, the arch registry, and safe checkpoint loading."""
