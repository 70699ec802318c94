"""Open Inference Protocol v2 (KServe / Triton): the generated stubs (make proto; do not edit
the *_pb2* files) and the protocol plumbing every model service's adapter uses: `tensors`
and `parameters` convert the protocol's tensors and parameters, `model` is the adapter
contract, `registry` resolves model names and versions, `servicer` serves
inference.GRPCInferenceService for the adapters of one server."""
