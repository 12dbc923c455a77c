"""The deterministic cluster simulator: many members, one seed, every invariant
checked after every step. Run `python -m tools.sim --help`."""
