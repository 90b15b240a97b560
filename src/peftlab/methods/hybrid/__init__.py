"""The survey's hybrid family."""
