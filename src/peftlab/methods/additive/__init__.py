"""The survey's additive family."""
