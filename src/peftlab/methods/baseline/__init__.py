"""Full fine-tuning: the baseline every method is measured against."""
