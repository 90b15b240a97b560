"""The survey's unified family."""
