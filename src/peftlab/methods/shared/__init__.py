"""Plumbing that several method families share; no method registers here.

The rule: a module here imports only ``peftlab.core`` and this folder. The base families (baseline,
additive, partial, reparameterized) import only core, this folder and their own folder; the composite
families (hybrid, unified) build on the base families' methods and never on each other. Something two
families need goes here, not into one of them. ``tests/test_layering.py`` holds the rule.
"""
