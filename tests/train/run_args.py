"""Run ``peftlab.train.run_training`` on TrainArgs given as JSON (argv[1]); for the multi-process tests."""

import json
import sys

import torch

from peftlab.train import TrainArgs, run_training

torch.set_num_threads(1)
run_training(TrainArgs(**json.loads(sys.argv[1])))
