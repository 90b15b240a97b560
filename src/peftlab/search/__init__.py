"""``peftlab select``: which PEFT configuration, for this model, task and budget?

The survey's open question 2 asks how to choose among PEFT methods, their hyperparameters and their
combinations for a given task and resource budget, rather than by hand; MAM, UniPELT and AutoPEFT each
explore a part of that space. This package searches it with Optuna under hard budgets:

* ``budgets``  ``--budget trainable=1% memory=3GiB hours=2``, parsed and checked;
* ``space``    the methods, their options and learning rates (E1's rates as priors), and compositions
  through the hybrids' parts;
* ``counting`` a candidate's trainable parameters and predicted memory, counted before it trains, so a
  configuration over budget is rejected (and recorded as such) without training;
* ``trials``   one trial: trained on the training split less a held-out part, its held-out score reported
  at each evaluation to the study's Hyperband pruner (successive halving), stopped early when it stalls;
* ``study``    the Optuna study in a database shared by any number of workers, resumed after a kill;
* ``finals``   the Pareto fronts' best retrained at full budget over three seeds, scored on dev;
* ``report``   the fronts, the recommended ``peftlab train --config`` file, and the plotted history;
* ``command``  the whole command, in that order.

The study optimises one objective, the held-out score: Optuna prunes only single-objective studies
(``Trial.report`` is refused on multi-objective ones), and the costs are known before training, so the
Pareto fronts of score against trainable parameters and against memory are read from the finished trials.
"""
