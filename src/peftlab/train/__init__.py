"""Fine-tune any registered method on the survey's tasks.

    from peftlab.train import TrainArgs, run_training
    metrics = run_training(TrainArgs(model="minilm-l6", task="sst2", method="lora", output_dir="runs/x"))

``run_training`` returns the run's record (also written to ``<output_dir>/metrics.json``).
"""

from peftlab.train.args import ArgumentError, EvalArgs, TrainArgs
from peftlab.train.evaluate_adapter import evaluate_adapter
from peftlab.train.loop import run_training

__all__ = ["ArgumentError", "EvalArgs", "TrainArgs", "evaluate_adapter", "run_training"]
