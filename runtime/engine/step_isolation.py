"""One request's failure stays that request's: a failed step is retried without the culprit.

A step runs every scheduled sequence in one batch, so anything one of them brings that
the admission checks did not foresee (a corrupt block table, a LoRA slot that is gone, a
sampling value a tensor cannot hold) raises for the whole batch. Rather than failing
everyone, `execute_isolated` bisects: it runs each half of the batch again, keeps the
output of every part that succeeds and narrows the failing parts down to single
sequences, which are the culprits. With k culprits among n sequences that costs about
k·log2(n) extra passes, only on the rare failing step; a step that fails for everyone
(the device is gone) ends with every sequence named, each with the error.

A retry recomputes rows whose K/V the failed attempt may already have written (the same
values at the same slots), and sampling draws from each request's own generator, so
every survivor's tokens are what they would have been without the culprit, as long as
the failure struck before sampling drew (metadata, LoRA, attention, logits all do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from loraplex.runtime.engine.model_runner import StepOutput
from loraplex.runtime.engine.scheduler import ScheduledSequence
from loraplex.runtime.engine.sequence import Sequence

log = logging.getLogger(__name__)

Execute = Callable[[list[ScheduledSequence]], StepOutput]


def execute_isolated(execute: Execute, scheduled: list[ScheduledSequence]
                     ) -> tuple[StepOutput, list[tuple[Sequence, Exception]]]:
    """(output of the sequences that ran, [(culprit, its error)]) for one step."""
    try:
        return execute(scheduled), []
    except Exception as error:
        if len(scheduled) == 1:
            log.error("request %s fails its step; failing it alone",
                      scheduled[0].seq.request_id, exc_info=error)
            return StepOutput(), [(scheduled[0].seq, error)]
        log.warning("a step of %d sequences failed (%s: %s); retrying its halves",
                    len(scheduled), type(error).__name__, error)
    output, culprits = StepOutput(), []
    middle = len(scheduled) // 2
    for part in (scheduled[:middle], scheduled[middle:]):
        part_output, part_culprits = execute_isolated(execute, part)
        output.sampled.update(part_output.sampled)
        output.prompt_logprobs.update(part_output.prompt_logprobs)
        culprits.extend(part_culprits)
    return output, culprits
