"""The survey's reparameterized family."""
