"""Model lifecycle, transport-free: versions of one model side by side (a Triton-style repository
and version policy), load/unload at run time without a dropped call, weighted and sticky routing,
shadow traffic. Services wire it in (embedding, classifier); the control RPCs live in api/."""
