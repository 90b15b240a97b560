"""The benchmark compares like with like: same model, batch and trainable set in both libraries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
measure = pytest.importorskip("measure")
import comparison_jobs  # noqa: E402
import report_tables  # noqa: E402
from job import Job, adapt, own_floor, prepare  # noqa: E402
from method_entries import METHODS  # noqa: E402
from workloads import WORKLOADS, build_model, make_batch  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_peftlab_and_peft_rows_measure_the_same_step(device):
    common = {"workload": "llama", "setting": "quick", "steps": 1, "warmup": 0, "device": device}
    ours = measure.run_train(Job(library="peftlab", method="lora", step="chunked+fused", **common))
    theirs = measure.run_train(Job(library="peft", method="lora", **common))
    floor = measure.run_train(Job(library="floor", **common))
    assert ours["trainable"] == theirs["trainable"] > 0
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], rel=1e-5)
    assert ours["first_loss"] == pytest.approx(floor["first_loss"], rel=1e-5)  # LoRA starts as the base
    for result in (ours, theirs):
        assert result["frozen_with_grad"] == 0  # no gradient buffers for frozen weights
        assert result["optimizer_state"] == 2 * result["trainable"]  # AdamW moments for the adapter only
    assert floor["trainable"] == 1 and floor["optimizer_state"] == 2
    # the chunked loss never holds the (batch, length, vocabulary) logits: counted tensor by tensor, not by RSS
    logits_mb = 2 * 64 * 32000 * 4 / 2**20
    assert ours["step_tensor_mb"] < theirs["step_tensor_mb"] - logits_mb


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dora", "rslora", "pissa", "lora_plus", "lora_fa", "vera", "loha", "lokr"])
def test_lora_family_rows_measure_the_same_step_as_peft(method):
    common = {"workload": "llama", "setting": "quick", "steps": 1, "warmup": 0}
    ours = measure.run_train(Job(library="peftlab", method=method, step="chunked+fused", **common))
    theirs = measure.run_train(Job(library="peft", method=method, **common))
    floor = measure.run_train(Job(library="floor", step="chunked+fused", **common))
    assert ours["trainable"] == theirs["trainable"] > 0
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], rel=1e-5)
    assert ours["first_loss"] == pytest.approx(floor["first_loss"], rel=1e-5)  # every one starts as the base
    for result in (ours, theirs):
        assert result["frozen_with_grad"] == 0
        assert result["optimizer_state"] == 2 * result["trainable"]


@pytest.mark.slow
def test_t5_prefix_rows_train_the_same_decoder_prefixes_in_both_libraries():
    common = {"workload": "t5", "setting": "quick", "steps": 1, "warmup": 0}
    ours = measure.run_train(Job(library="peftlab", method="prefix_tuning", **common))
    theirs = measure.run_train(Job(library="peft", method="prefix_tuning", **common))
    assert ours["trainable"] == theirs["trainable"] == 10 * 2 * 2 * 256  # 10 prefixes, 2 decoder layers, k and v


@pytest.mark.slow
def test_own_floor_runs_the_base_as_the_method_changes_it():
    common = {"workload": "llama", "setting": "quick", "steps": 1, "warmup": 0}
    floor = measure.run_train(Job(library="floor", **common))
    nf4_floor = measure.run_train(Job(library="floor", method="qlora", **common))
    qlora = measure.run_train(Job(library="peftlab", method="qlora", **common))
    assert nf4_floor["trainable"] == 1
    # LoRA starts as its NF4 base, bit for bit; quantizing moves the loss (by 1e-6 on random weights)
    assert nf4_floor["first_loss"] == qlora["first_loss"] != floor["first_loss"]
    workload = WORKLOADS["llama"]
    plain, longer = (make_batch(workload, "quick", lead_tokens=n) for n in (0, 20))
    assert longer["input_ids"].shape[1] == plain["input_ids"].shape[1] + 20
    assert torch.equal(longer["input_ids"][:, 20:], plain["input_ids"])
    assert (longer["labels"][:, :20] == -100).all() and torch.equal(longer["labels"][:, 20:], plain["labels"])


@pytest.mark.slow
def test_qlora_at_loras_size_trains_loras_factors_over_the_nf4_base_in_both_libraries():
    pytest.importorskip("bitsandbytes")
    common = {"workload": "llama", "setting": "quick", "steps": 1, "warmup": 0}
    ours = measure.run_train(Job(library="peftlab", method="qlora_qv", **common))
    theirs = measure.run_train(Job(library="peft", method="qlora_qv", **common))
    lora = measure.run_train(Job(library="peftlab", method="lora", **common))
    nf4_floor = measure.run_train(Job(library="floor", method="qlora_qv", **common))
    assert ours["trainable"] == theirs["trainable"] == lora["trainable"]  # r=8 on q and v, as lora
    assert ours["first_loss"] == nf4_floor["first_loss"]  # starts as its own (NF4) floor, bit for bit
    assert theirs["first_loss"] == pytest.approx(ours["first_loss"], rel=1e-5)
    assert METHODS["qlora_qv"].changes_the_base


@pytest.mark.slow
@pytest.mark.parametrize("library", ["peft", "peftlab"])
def test_bare_runs_the_base_on_the_adapted_models_tensors_and_puts_the_wrappers_back(library):
    workload = WORKLOADS["llama"]
    batch = make_batch(workload, "quick", with_labels=False)
    base = build_model(workload, "quick").eval()
    job = Job(workload="llama", setting="quick", library=library, method="lora")
    model, *_ = adapt(job, build_model(workload, "quick"))
    model.eval()
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.01)
        expected = base(**batch).logits
        adapted = model(**batch).logits
        with measure.bare(model) as plain:
            torch.testing.assert_close(plain(**batch).logits, expected, atol=0, rtol=0)
        torch.testing.assert_close(model(**batch).logits, adapted, atol=0, rtol=0)
    assert not torch.equal(adapted, expected)


@pytest.mark.slow
def test_flop_counts_show_full_fine_tuning_at_one_and_a_half_floors_and_count_the_4bit_forward():
    common = {"workload": "llama", "setting": "quick", "kind": "flops", "step": "plain"}  # the full row's step
    floor = measure.run_flops(Job(library="floor", **common))["flops"]
    full = measure.run_flops(Job(library="full", **common))["flops"]
    lora = measure.run_flops(Job(library="peftlab", method="lora", **common))["flops"]
    assert 1.4 < full / floor < 1.6  # weight gradients add about half again
    assert 0.95 < lora / floor < 1.05  # rank-8 factors add little; its backward stops above the embeddings
    pytest.importorskip("bitsandbytes")
    nf4_floor = measure.run_flops(Job(library="floor", method="qlora", **common))["flops"]
    assert nf4_floor == pytest.approx(floor, rel=1e-3)  # the 4-bit forward's matmuls are counted too


def test_every_step_a_row_runs_has_its_floor_so_no_ratio_reads_n_a():
    compare_peft = pytest.importorskip("compare_peft")
    args = compare_peft.parse(["--models", "smollm2=lora+qlora,roberta=lora,t5=lora",
                               "--extra-steps", "chunked+fused+fastdrop"])
    jobs = comparison_jobs.train_jobs(args)
    floors = {(job.workload, job.method, job.step) for job in jobs if job.library == "floor"}
    rows = [job for job in jobs if job.library == "peftlab"]
    assert {(job.workload, job.step) for job in rows} == {  # RoBERTa, T5 train with dropout: eager, fast masks
        ("smollm2", "chunked+fused+compile"), ("smollm2", "chunked+fused"), ("roberta", "plain+fastdrop"),
        ("t5", "chunked+fused+fastdrop")}
    for job in rows:
        assert (job.workload, "", job.step) in floors
        if METHODS[job.method].changes_the_base:
            assert (job.workload, job.method, job.step) in floors


def test_the_fastdrop_step_draws_the_fast_masks_and_the_plain_step_does_not(monkeypatch):
    from conftest import count_fast_dropouts

    calls = count_fast_dropouts(monkeypatch)
    job = Job(workload="roberta", setting="quick", library="floor")
    prepare(job, {"plain"}).compute_loss()
    assert calls == []
    prepare(job, {"plain", "fastdrop"}).compute_loss()
    assert calls  # every dropout of the model, the attention's too


def test_paired_rounds_alternate_sides_and_read_the_median_of_their_own_ratios(monkeypatch):
    clock = {"now": 0.0}
    order = []
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(measure, "prepare", lambda job, features: job)  # the job stands in for its model

    def fake_step(job, step):
        order.append(job.library)
        clock["now"] += {"floor": 1.0, "peftlab": 1.1}[job.library] * (3 if step == 2 else 1)  # a slow round
        return 0.0

    monkeypatch.setattr(measure, "train_step", fake_step)
    job = Job(workload="llama", setting="quick", library="peftlab", method="prompt_tuning", kind="paired",
                      steps=4, warmup=1)
    result = measure.run_paired(job)
    assert order == ["floor", "peftlab", "peftlab", "floor"] * 2 + ["floor", "peftlab"]
    assert result["vs_floor"] == pytest.approx(1.1)  # the slow round slowed both of its sides alike
    assert result["over_floor_s"] == pytest.approx(0.1)  # the median round's difference, not the slow one's 0.3
    assert own_floor(job).method == "prompt_tuning"  # its base reads the virtual tokens too
    assert own_floor(Job(workload="llama", setting="quick", library="peftlab",
                                         method="lora")).method == ""


def test_versus_runs_peft_and_peftlab_with_their_own_steps_interleaved(monkeypatch):
    clock = {"now": 0.0}
    seen = []
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(measure, "prepare", lambda job, features: (job, frozenset(features)))

    def fake_step(side, step):
        job, features = side
        seen.append((job.library, job.step, features))
        clock["now"] += {"peft": 1.0, "peftlab": 0.8}[job.library] * (5 if step == 1 else 1)
        return 0.0

    monkeypatch.setattr(measure, "train_step", fake_step)
    job = Job(workload="smollm2", setting="quick", library="peftlab", method="lora", kind="versus",
                      step="chunked+fused", partner_step="plain", steps=3, warmup=1)
    result = measure.run_versus(job)
    assert [library for library, _, _ in seen] == ["peft", "peftlab", "peftlab", "peft"] * 2
    assert {(library, step) for library, step, _ in seen} == {("peft", "plain"), ("peftlab", "chunked+fused")}
    assert {features for _, _, features in seen} == {frozenset({"plain"}), frozenset({"chunked", "fused"})}
    assert result["vs_peft"] == pytest.approx(0.8)


def test_versus_jobs_pair_each_shared_method_with_both_libraries_steps_and_keep_the_table_width():
    compare_peft = pytest.importorskip("compare_peft")
    args = compare_peft.parse(["--models", "roberta=ia3+prefix_tuning", "--kinds", "versus"])
    ia3, prefix = comparison_jobs.versus_jobs(args)
    assert (ia3.kind, ia3.step, ia3.partner_step) == ("versus", "plain+fastdrop", "plain")  # a classifier: its own loss
    results = {ia3.key: [{"step_s": 0.5, "peft_step_s": 0.55, "vs_peft": 0.91}],
               prefix.key: [{"error": "ValueError: Model does not support past key values"}]}
    lines = report_tables.versus_table([ia3, prefix], results)
    assert len({line.count("|") for line in lines if line}) == 1
    assert lines[2].endswith("| 0.550 | 0.500 | 0.910x |") and "error: ValueError" in lines[3]


def test_paired_jobs_count_the_flops_of_both_sides():
    compare_peft = pytest.importorskip("compare_peft")
    args = compare_peft.parse(["--models", "smollm2=lora+qlora", "--kinds", "paired"])
    paired = comparison_jobs.paired_jobs(args)
    assert [(job.method, job.step) for job in paired] == [("lora", "chunked+fused+compile"),
                                                          ("qlora", "chunked+fused+compile")]
    counted = {(job.library, job.method, job.step) for job in comparison_jobs.flop_jobs([], paired)}
    assert counted == {("peftlab", "lora", "chunked+fused"), ("floor", "", "chunked+fused"),
                       ("peftlab", "qlora", "chunked+fused"), ("floor", "qlora", "chunked+fused")}
    with pytest.raises(SystemExit):
        compare_peft.parse(["--kinds", "train,speed"])


def test_paired_table_reads_the_cost_per_added_flop_and_keeps_its_width_on_errors():
    compare_peft = pytest.importorskip("compare_peft")
    args = compare_peft.parse(["--models", "smollm2=lora+qlora", "--kinds", "paired"])
    lora, qlora = comparison_jobs.paired_jobs(args)
    flops = {side: value for side, value in ((lora, 110.0), (own_floor(lora), 100.0))}
    results = {report_tables.flop_job(side).key: [{"flops": value}] for side, value in flops.items()}
    results[lora.key] = [{"step_s": 1.2, "floor_step_s": 1.0, "vs_floor": 1.21, "over_floor_s": 0.2}]
    results[qlora.key] = [{"error": "RuntimeError: out of memory"}]
    header, rule, lora_row, qlora_row, _ = report_tables.paired_table([lora, qlora], results)
    widths = {line.count("|") for line in (header, rule, lora_row, qlora_row)}
    assert len(widths) == 1
    assert lora_row.split("|")[-4:-1] == [" 200 ", " 1.10x ", " 1.100x "]  # ms over; 1.21 / (110 / 100)
    assert "error: RuntimeError: out of memory" in qlora_row


@pytest.mark.slow
def test_paired_measures_lora_against_the_floor_on_a_real_step():
    job = Job(workload="llama", setting="quick", library="peftlab", method="lora", kind="paired",
                      step="chunked+fused", steps=2, warmup=1)
    result = measure.run_paired(job)
    assert result["step_s"] > 0 and result["floor_step_s"] > 0
    assert 0.5 < result["vs_floor"] < 2.0


@pytest.mark.slow
def test_versus_measures_peftlab_against_peft_on_a_real_step():
    job = Job(workload="llama", setting="quick", library="peftlab", method="lora", kind="versus",
                      step="chunked+fused", partner_step="plain", steps=2, warmup=1)
    result = measure.run_versus(job)
    assert result["step_s"] > 0 and result["peft_step_s"] > 0
    assert 0.3 < result["vs_peft"] < 3.0


def test_every_job_of_a_run_keeps_freed_host_memory_unless_told_otherwise():
    compare_peft = pytest.importorskip("compare_peft")
    for flag, expected in (([], "keep"), (["--host-memory", "system"], "system")):
        args = compare_peft.parse(["--models", "llama=ia3+lora", "--kinds", "train,paired,versus,infer", *flag])
        jobs = [job for kind in comparison_jobs.all_jobs(args) for job in kind]
        assert {job.kind for job in jobs} == {"train", "paired", "versus", "infer"}
        assert {job.host_memory for job in jobs} == {expected}
    no_inference = compare_peft.parse(["--models", "llama=ia3", "--no-inference"])
    assert comparison_jobs.all_jobs(no_inference)[3] == []
