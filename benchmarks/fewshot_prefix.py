"""Time MMLU 5-shot scoring with each subject's shared prefix read once (``peftlab.train.shared_prefix``)
against the full prompts, and 0-shot for reference, on the same questions; checks the predictions agree.

    PEFTLAB_DATA=... python benchmarks/fewshot_prefix.py --model smollm2-135m --subjects 3

Warms up on one question, then times each path once over ``--subjects`` subjects of the fixed MMLU subset.
"""

from __future__ import annotations

import argparse
import time

import torch

from peftlab.tasks import get_task
from peftlab.train import evaluation
from peftlab.train.encoding import PromptCuts
from peftlab.train.models import load_model
from peftlab.train.shared_prefix import letter_logprobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    five_task, zero_task = get_task("mmlu-subset-5shot"), get_task("mmlu-subset")
    five, zero = five_task.load("test"), zero_task.load("test")
    subjects = sorted({e.group for e in five})[: args.subjects]
    five = [e for e in five if e.group in subjects]
    zero = [e for e in zero if e.group in subjects]
    loaded = load_model(args.model, five_task)
    model, tokenizer, kind = loaded.model.eval(), loaded.tokenizer, loaded.kind
    device = next(model.parameters()).device
    limit = evaluation.prompt_limit(model, tokenizer, 128)
    letters = evaluation.letter_ids(tokenizer, kind)

    def shared() -> torch.Tensor:
        return letter_logprobs(model, tokenizer, five, letters, limit=limit, batch_size=args.batch_size,
                               device=device, cuts=PromptCuts())

    def full(examples) -> torch.Tensor:
        return torch.cat([evaluation.full_prompt_letter_logprobs(model, tokenizer, kind, examples[i:i + args.batch_size],
                                                                 limit, device, PromptCuts())
                          for i in range(0, len(examples), args.batch_size)])

    with torch.no_grad():
        evaluation.full_prompt_letter_logprobs(model, tokenizer, kind, five[:1], limit, device, PromptCuts())  # warm-up
        timings, results = {}, {}
        for name, run in (("0-shot", lambda: full(zero)), ("5-shot full prompts", lambda: full(five)),
                          ("5-shot shared prefix", shared)):
            started = time.perf_counter()
            results[name] = run()
            timings[name] = time.perf_counter() - started
    a, b = results["5-shot shared prefix"], results["5-shot full prompts"]
    print(f"{args.model}: {len(subjects)} subjects x {len(five) // len(subjects)} questions ({', '.join(subjects)}), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    for name, seconds in timings.items():
        print(f"  {name:22s} {seconds:7.1f} s")
    print(f"  speed-up of the shared prefix over full 5-shot prompts: {timings['5-shot full prompts'] / timings['5-shot shared prefix']:.1f}x; "
          f"its cost against 0-shot: {timings['5-shot shared prefix'] / timings['0-shot']:.2f}x")
    print(f"  predictions equal: {bool((a.argmax(-1) == b.argmax(-1)).all())}; "
          f"largest letter log-likelihood difference: {float((a - b).abs().max()):.2e}")


if __name__ == "__main__":
    main()
