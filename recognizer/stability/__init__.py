"""Stability: the pre-flight audit (bad data never reaches a step) and the non-finite step guard."""
