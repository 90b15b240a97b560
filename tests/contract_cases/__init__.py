"""One file per registered method: the options used on the tiny models and a hand count of its
trainable parameters. ``tests/test_contract.py`` runs the contract over every registered method and
fails when a method has no case file here.

A case file defines:
    OPTIONS: dict            options passed to peftlab.apply on the tiny models
    def expected_trainable(arch: str, base: nn.Module) -> int
                             the trainable count, computed by hand from the tiny configs (not by peftlab)
and may define:
    STARTS_AS_BASE: bool     outputs at initialisation equal the base model's (default True)
    FROZEN_BASE: bool        base weights stay bit-identical in training (default True; False for full
                             fine-tuning and partial methods that train base weights)
    SKIP: dict[str, str]     architecture -> reason, for combinations that genuinely cannot run here
"""
