"""MMLU letter scoring with and without ``logits_to_keep=1`` (``train.models.last_position_logits``), timed.

A causal LM's next-token scoring needs one vocabulary row per prompt; without ``logits_to_keep`` the model
computes one per position. Times ``full_prompt_letter_logprobs`` on the first N ``mmlu-subset`` prompts both
ways, alternating, and checks that both give the same scores:

    PEFTLAB_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/last_position_logits.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from peftlab.tasks import get_task
from peftlab.train import evaluation, models
from peftlab.train.encoding import PromptCuts
from peftlab.train.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    task = get_task("mmlu-subset")
    examples = task.load("test", os.environ["PEFTLAB_DATA"])[:args.prompts]
    loaded = load_model(args.model, task)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer

    def score(keep: bool) -> tuple[float, torch.Tensor]:
        evaluation.last_position_logits = models.last_position_logits if keep else (lambda model: {})
        start = time.perf_counter()
        with torch.no_grad():
            found = [evaluation.full_prompt_letter_logprobs(model, tokenizer, "decoder", examples[i:i + args.batch_size],
                                                            10**6, torch.device("cpu"), PromptCuts())
                     for i in range(0, len(examples), args.batch_size)]
        return time.perf_counter() - start, torch.cat(found)

    times: dict[bool, list[float]] = {True: [], False: []}
    scores: dict[bool, torch.Tensor] = {}
    for _ in range(args.repeats):
        for keep in (True, False):
            seconds, scores[keep] = score(keep)
            times[keep].append(seconds)
    tokens = [len(tokenizer(example.text)["input_ids"]) for example in examples]
    print(f"{args.model}, {len(examples)} prompts (mean {sum(tokens) / len(tokens):.0f} tokens), batch "
          f"{args.batch_size}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"last position only: {min(times[True]):.1f} s; every position: {min(times[False]):.1f} s "
          f"(best of {args.repeats}); ratio {min(times[True]) / min(times[False]):.2f}")
    print(f"largest score difference: {(scores[True] - scores[False]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
