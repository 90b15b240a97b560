"""Several adapters trained at once on one base (issue 32): each lane's losses and weights equal training
that adapter alone with the model's own loss, on the four architectures."""

from __future__ import annotations

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS, batch_for, tiny_bert
from peftlab.core.checks import InertAdapterWarning
from peftlab.core.state import adapter_states, named_adapter_parameters
from peftlab.train.several import Lane, PackedTrainingError, train_packed

STEPS = 3
LANES = {"s0": 0, "s1": 1, "s2": 2}  # adapter name -> seed of its data and its initial weights


def lane_batches(model, seed: int) -> list[dict[str, torch.Tensor]]:
    """The lane's micro-batches: its own data, of its own length (so stacking pads)."""
    return [batch_for(model, batch=2, length=6 + seed + step, seed=100 * seed + step) for step in range(STEPS)]


def optimizer_for(parameters) -> torch.optim.Optimizer:
    """SGD with momentum: per-lane state, and linear in the gradient, so float-rounding differences in the
    gradients stay that small (Adam's normalisation would magnify them where a gradient is near zero)."""
    return torch.optim.SGD(list(parameters), lr=0.5, momentum=0.9)


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_packed_lanes_train_as_each_adapter_would_alone(architecture, tmp_path):
    builder = FAMILY_BUILDERS[architecture]
    packed = builder().eval()  # eval: no dropout, so alone and packed draw nothing different
    for name, seed in LANES.items():
        torch.manual_seed(seed)
        peftlab.apply(packed, "lora", adapter_name=name, rank=4, target_modules=["all_linear"])
    starts = peftlab.save_adapter(packed, tmp_path / "start")  # each lane's initial weights, to train alone too
    states = adapter_states(packed)
    lanes = [Lane(name, iter(lane_batches(packed, seed)),
                  optimizer_for(p for _, p in named_adapter_parameters(packed, states[name])), max_grad_norm=1.0)
             for name, seed in LANES.items()]
    train_packed(packed, lanes, STEPS, pad_token_id=0)

    for lane in lanes:
        with pytest.warns(InertAdapterWarning):  # LoRA starts at B = 0
            alone = peftlab.load_adapter(builder().eval(), starts / lane.adapter)
        optimizer = optimizer_for(p for _, p in peftlab.adapter_parameters(alone))
        losses = []
        for batch in lane_batches(alone, LANES[lane.adapter]):
            loss = alone(**batch).loss  # the model's own loss, on the lane's micro-batch alone
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in peftlab.adapter_parameters(alone)], 1.0)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
        assert lane.losses == pytest.approx(losses, abs=1e-5, rel=1e-4)
        peftlab.set_adapter(packed, lane.adapter)
        trained = dict(peftlab.adapter_parameters(packed))
        for name, parameter in peftlab.adapter_parameters(alone):
            torch.testing.assert_close(trained[name], parameter, atol=1e-5, rtol=1e-4)


def test_lanes_need_their_own_adapters():
    model = peftlab.apply(tiny_bert(), "lora", adapter_name="a")
    batches = iter([batch_for(model)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(PackedTrainingError, match=r"lanes: \['a', 'a'\]"):
        train_packed(model, [Lane("a", batches, optimizer), Lane("a", batches, optimizer)], 1, pad_token_id=0)
    with pytest.raises(PackedTrainingError, match="the model has \\['a'\\]"):
        train_packed(model, [Lane("b", batches, optimizer)], 1, pad_token_id=0)
