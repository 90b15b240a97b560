"""``peftlab train`` with several adapters at once (``--seeds``, ``--lanes``, repeated ``--config``): each lane
writes the run folder its solo run writes, starts from the same draw, and without dropout trains the same
(loss curve and final adapter to float rounding); with dropout a rerun of the pack is identical; refusals."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from peftlab.cli import main
from peftlab.train.args import TrainArgs
from peftlab.train.packed_run import PackError, pack_problem
from train.tiny import save_tiny

SMALL = ["--max-train-samples", "12", "--max-eval-samples", "6", "--batch-size", "4", "--no-progress",
         "--lr", "1e-2", "--warmup-ratio", "0"]


@pytest.fixture(scope="module")
def still_llama(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-still-llama") / "llama", dropout=False)


def train(capsys, *words):
    code = main(["train", *words])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def losses(folder):
    return [r["loss"] for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]


def assert_same_run(packed, alone, atol=1e-4):
    assert losses(packed) == pytest.approx(losses(alone), abs=atol, rel=1e-3)
    trained, solo = load_file(packed / "adapter_model.safetensors"), load_file(alone / "adapter_model.safetensors")
    assert trained.keys() == solo.keys()
    for name in solo:
        torch.testing.assert_close(trained[name], solo[name], atol=atol, rtol=1e-3)
    metrics, solo_metrics = (json.loads((f / "metrics.json").read_text()) for f in (packed, alone))
    assert metrics["scores"] == pytest.approx(solo_metrics["scores"], abs=1e-6, rel=1e-5)
    assert metrics["parameters"] == solo_metrics["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "task"), [("bert", "sst2"), ("llama", "alpaca")])
def test_seeds_at_once_train_as_each_seed_alone(family, task, still_bert, still_llama, data_root, tmp_path, capsys):
    model = str(still_bert if family == "bert" else still_llama)
    common = ["--model", model, "--task", task, "--method", "lora", "--set", "rank=4", "--max-steps", "4",
              "--logging-steps", "1", "--eval-steps", "2", "--save-steps", "2", "--data-dir", str(data_root), *SMALL]
    printed = train(capsys, *common, "--seeds", "0", "1", "--output", str(tmp_path / "pack"))
    assert [lane["lane"] for lane in printed] == ["lora-seed0", "lora-seed1"]
    for seed in (0, 1):
        alone = tmp_path / f"alone{seed}"
        train(capsys, *common, "--seed", str(seed), "--output", str(alone))
        packed = tmp_path / "pack" / f"lora-seed{seed}"
        assert {"adapter_model.safetensors", "metrics.json", "log.jsonl", "best", "checkpoint-4"} <= {
            p.name for p in packed.iterdir()}
        assert_same_run(packed, alone)
        metrics = json.loads((packed / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["packed_with"] == [f"lora-seed{1 - seed}"]


@pytest.mark.slow
def test_lora_ia3_and_adapter_in_one_pack_start_and_train_as_alone(still_bert, data_root, tmp_path, capsys):
    common = ["--model", str(still_bert), "--task", "sst2", "--max-steps", "3", "--logging-steps", "1",
              "--data-dir", str(data_root), *SMALL]
    lanes = [{"method": "lora", "seed": 2, "options": {"rank": 4}}, {"method": "ia3", "seed": 2},
             {"method": "adapter", "seed": 5, "learning_rate": 5e-3}]
    train(capsys, *common, "--lanes", json.dumps(lanes), "--output", str(tmp_path / "pack"))
    for lane, name in zip(lanes, ["lora-seed2", "ia3-seed2", "adapter-seed5"]):
        words = ["--method", lane["method"], "--seed", str(lane["seed"]),
                 *[w for k, v in lane.get("options", {}).items() for w in ("--set", f"{k}={v}")]]
        if "learning_rate" in lane:
            words += ["--lr", str(lane["learning_rate"])]
        train(capsys, *common, *words, "--output", str(tmp_path / name))
        assert_same_run(tmp_path / "pack" / name, tmp_path / name)


@pytest.mark.slow
def test_configs_at_once_and_a_stopped_pack_resumes_to_the_same_end(still_bert, data_root, tmp_path, capsys):
    for name, method in (("a", "lora"), ("b", "ia3")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"method": method, "seed": 1}))
    common = ["--model", str(still_bert), "--task", "sst2", "--config", str(tmp_path / "a.yaml"),
              "--config", str(tmp_path / "b.yaml"), "--logging-steps", "1", "--save-steps", "1", "--save-total-limit", "4",
              "--data-dir", str(data_root), *SMALL]
    train(capsys, *common, "--max-steps", "4", "--output", str(tmp_path / "whole"))
    train(capsys, *common, "--max-steps", "4", "--output", str(tmp_path / "part"))
    for lane in ("lora-seed1", "ia3-seed1"):  # as if killed after step 2: newer checkpoints and metrics gone
        folder = tmp_path / "part" / lane
        for name in ("checkpoint-3", "checkpoint-4"):
            for file in sorted((folder / name).rglob("*"), reverse=True):
                file.unlink() if file.is_file() else file.rmdir()
            (folder / name).rmdir()
        (folder / "metrics.json").unlink()
    (tmp_path / "part" / "ia3-seed1" / "checkpoint-2" / "trainer_state.json").unlink()  # one lane got further
    train(capsys, *common, "--max-steps", "4", "--output", str(tmp_path / "part"), "--resume")
    for lane in ("lora-seed1", "ia3-seed1"):
        assert losses(tmp_path / "part" / lane) == pytest.approx(losses(tmp_path / "whole" / lane), abs=1e-6)
        whole = load_file(tmp_path / "whole" / lane / "adapter_model.safetensors")
        for name, tensor in load_file(tmp_path / "part" / lane / "adapter_model.safetensors").items():
            torch.testing.assert_close(tensor, whole[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_with_dropout_a_rerun_of_the_pack_is_identical(tiny_models, data_root, tmp_path, capsys):
    common = ["--model", str(tiny_models["bert"]), "--task", "sst2", "--method", "lora", "--seeds", "3", "4",
              "--max-steps", "3", "--logging-steps", "1", "--data-dir", str(data_root), *SMALL]
    first = train(capsys, *common, "--output", str(tmp_path / "one"))
    again = train(capsys, *common, "--output", str(tmp_path / "two"))
    assert [lane["scores"] for lane in first] == [lane["scores"] for lane in again]
    for lane in ("lora-seed3", "lora-seed4"):
        assert losses(tmp_path / "one" / lane) == losses(tmp_path / "two" / lane)


def args(**changes):
    return TrainArgs(**{"model": "m", "task": "sst2", **changes})


@pytest.mark.parametrize(("lanes", "named"), [
    ([args(seed=1), args(seed=2, batch_size=8)], "differ in batch_size"),
    ([args(seed=1), args(seed=2, task="rte")], "differ in task"),
    ([args(seed=1, fsdp=True), args(seed=2, fsdp=True)], "--fsdp"),
    ([args(seed=1, compile=True), args(seed=2, compile=True)], "--compile"),
    ([args(seed=1, gradient_accumulation_steps=2), args(seed=2, gradient_accumulation_steps=2)], "--grad-accum"),
    ([args(seed=1), args(seed=2, method="adalora")], "adalora"),
    ([args(seed=1, method="untuned"), args(seed=2)], "untuned"),
    ([args(seed=1, output_dir="x"), args(seed=2, output_dir="x")], "own output folder"),
    ([args(seed=s, report_to=("tensorboard",), output_dir=f"o{s}") for s in (1, 2)], "--report-to"),
])
def test_what_cannot_train_at_once_is_named(lanes, named):
    assert named in pack_problem(lanes)


def test_methods_that_change_the_base_are_refused_before_training(still_bert, data_root, tmp_path, capsys):
    code = main(["train", "--model", str(still_bert), "--task", "sst2", "--lanes",
                 json.dumps([{"method": "lora"}, {"method": "bitfit"}]), "--max-steps", "1",
                 "--data-dir", str(data_root), *SMALL])
    assert code != 0 and "bitfit" in capsys.readouterr().err
    assert pack_problem([args(seed=1), args(seed=2, learning_rate=1e-3, options={"rank": 2})]) is None
    with pytest.raises(PackError):
        from peftlab.train.packed_run import run_packed

        run_packed([args(seed=1), args(seed=1, batch_size=2)])


def test_each_lane_starts_bit_identical_to_its_solo_runs_draw(still_bert, data_root):
    """A lane's adapter and new head start as its solo run draws them (its own make_plan, copied in); STS-B's
    one-output head is new, drawn under each seed."""
    from accelerate import Accelerator

    from peftlab.core.adapters import set_adapter
    from peftlab.core.serialization import adapter_state_dict
    from peftlab.train.packed_run import _lane_trainers, lane_names
    from peftlab.train.plan import make_plan

    lanes = [TrainArgs(model=str(still_bert), task="stsb", method=method, seed=seed, max_train_samples=8,
                       data_dir=str(data_root), progress=False) for method, seed in (("lora", 0), ("lora", 1), ("ia3", 0))]
    names = lane_names(lanes)
    model = _lane_trainers(lanes, names, Accelerator(cpu=True))[0].base
    starts = {}
    for args, name in zip(lanes, names):
        solo = adapter_state_dict(make_plan(args).loaded.model)
        set_adapter(model, name)
        starts[name] = adapter_state_dict(model)
        assert starts[name].keys() == solo.keys()
        assert all(torch.equal(starts[name][key], solo[key]) for key in solo), name
    assert not torch.equal(starts["lora-seed0"]["classifier.weight"], starts["lora-seed1"]["classifier.weight"])
