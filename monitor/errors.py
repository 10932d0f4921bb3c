"""Errors of the monitor package.

LorafleetError                      (lorafleet.errors)
 +-- MonitorError
      +-- FeedbackError
      |    +-- UnknownCompletionError   feedback for a completion id the answer log does not hold
      |    +-- FeedbackConflictError    a second feedback for one answer that contradicts the first
      |    +-- InvalidFeedbackError     neither or both of label/correct given
      +-- StoreError                    the answer log's database
      |    +-- StoreUnavailableError    unreachable or failing now (the gateway answers 503 to feedback)
      |    +-- StoreSchemaError         tables lorafleet did not write, or a newer schema: refused, untouched
      +-- SignalsUnavailableError       Prometheus unreachable or a query failed
"""

from __future__ import annotations

from lorafleet.errors import LorafleetError


class MonitorError(LorafleetError):
    pass


class FeedbackError(MonitorError):
    pass


class UnknownCompletionError(FeedbackError):
    def __init__(self, completion_id: str) -> None:
        super().__init__(
            f"no answer with completion id '{completion_id}' in the answer log",
            hint="feedback must name the `id` of a completion this gateway returned "
            "(answers older than the retention are forgotten)",
        )
        self.completion_id = completion_id


class FeedbackConflictError(FeedbackError):
    def __init__(self, completion_id: str, stored: str, given: str) -> None:
        super().__init__(
            f"completion '{completion_id}' already has feedback ({stored}); refusing a different one ({given})",
            hint="feedback is append-only: one verdict per answer",
        )
        self.completion_id = completion_id


class InvalidFeedbackError(FeedbackError):
    pass


class SignalsUnavailableError(MonitorError):
    pass


class StoreError(MonitorError):
    pass


class StoreUnavailableError(StoreError):
    pass


class StoreSchemaError(StoreError):
    pass
