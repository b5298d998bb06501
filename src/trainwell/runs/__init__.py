"""Recipes: one training run wired from a config (``train``), fine-tuning (``finetune``), the LR range test.

They sit above the doctor (``doctor=true``, the divergence diagnosis) and below the experiments,
which run them many times (compare, labs, ensembles).
"""
