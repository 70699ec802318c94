"""Model loading and inference backends (onnxruntime, torch) with device selection.

Backends know nothing about queues or gRPC: they take padded id arrays and return arrays.
"""
