"""The breast cancer example: a tabular MLP that normalizes raw measurements in its first layer."""
