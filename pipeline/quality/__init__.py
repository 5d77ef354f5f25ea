"""How good a variant's answers are: against ground truth, and against each other."""
