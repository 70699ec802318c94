"""Open Inference Protocol (KServe v2 / Triton) front of every model service.

`tensors` and `parameters` convert the protocol's tensors and parameters, each model
service has one small adapter onto its logic object (`embedding`, ...), and `servicer`
serves inference.GRPCInferenceService for the adapters of one server.
"""
