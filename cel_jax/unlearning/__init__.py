"""Unlearning: losses, methods, the dual, the Lagrangian objective and the jitted step."""
