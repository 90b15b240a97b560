"""The library core: registry, targeting, injection, accounting, save/load, merge. No method lives here."""
