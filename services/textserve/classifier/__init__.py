"""Classifier service: scores texts against labels (sequence-classification, zero-shot, linear head)."""
