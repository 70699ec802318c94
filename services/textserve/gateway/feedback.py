"""POST /v1/feedback: ground truth for an earlier classification -> ClassifierService.Feedback.

A textserve extension (OpenAI has no such endpoint). The body names the Classify call by
its x-request-id and the text by its index; the classifier joins the label with the
prediction it kept. Unknown or expired ids answer 404, a label the classifier lacks 400
(`param` label), and feedback for a text that had some already is accepted once: the
answer says `duplicate` and it is not counted again. The endpoint answers 404
(endpoint_not_configured) unless `gateway.classifier_address` is set.
"""

from __future__ import annotations

from typing import Literal

from textserve.gateway.backends import Backends
from textserve.gateway.calls import CallOptions
from textserve.gateway.protocol import FeedbackRequest, FeedbackResponse
from textserve.v1 import classifier_pb2

_RESULTS: dict[int, Literal["joined", "duplicate"]] = {
    classifier_pb2.FeedbackResponse.RESULT_JOINED: "joined",
    classifier_pb2.FeedbackResponse.RESULT_DUPLICATE: "duplicate",
}


def _rename(field: str) -> str:
    """The service's field names -> the HTTP body's (`text_index` -> `index`)."""
    return "index" if field == "text_index" else field


class FeedbackServing:
    """Serves /v1/feedback through the classifier service."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def create(self, request: FeedbackRequest, options: CallOptions) -> FeedbackResponse:
        """Forwards the feedback; raises GatewayError (400/404/503/504/...)."""
        message = classifier_pb2.FeedbackRequest(
            request_id=request.request_id, text_index=request.index, label=request.label
        )
        response = await self.backends.unary("classifier", "Feedback", message, options, rename=_rename)
        return FeedbackResponse(result=_RESULTS.get(response.result, "joined"))
