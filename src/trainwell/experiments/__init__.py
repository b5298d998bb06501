"""Experiments: ablations over seeds (compare) and the lecture's labs."""
