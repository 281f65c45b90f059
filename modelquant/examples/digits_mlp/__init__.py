"""The digits MLP example: a Linear-only model for weight-only INT4 (MatMulNBits)."""
