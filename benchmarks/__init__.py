"""amortbench harness: datasets, shared generative models, training, evaluation and reports.

Inference methods plug in through the contract in ``methods/base.py``; everything here is generic.
"""
__version__ = "0.1.0"
