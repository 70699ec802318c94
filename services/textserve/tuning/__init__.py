"""Batch-budget tuning: measure the forward curve on the device, choose a budget, load it at start."""
