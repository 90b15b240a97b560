"""The survey's partial family."""
