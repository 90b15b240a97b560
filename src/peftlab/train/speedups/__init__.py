"""The training step's speed-ups: each computes the same step as the plain one, in less time or memory.

They are opt-in (``peftlab train`` turns them on through its options; any training loop may call them) and
build on ``peftlab.core``. The library (core and methods) never imports them: a method works without them.
"""
