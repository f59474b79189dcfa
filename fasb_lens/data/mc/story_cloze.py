"""Story Cloze: which of two endings completes a four-sentence story?

The prompt is the story; each ending is scored as its continuation. The data (ROCStories)
is distributed by its authors to registered users, so it is not in the shared data folder.
"""

from __future__ import annotations

from pathlib import Path

from fasb_lens.data._files import require_file
from fasb_lens.data.mc._common import (
    FIRST_OR_SECOND,
    OptionPrompt,
    Record,
    csv_records,
    finish,
    same_prefix,
)
from fasb_lens.data.mc.registry import MultipleChoiceDataset, register
from fasb_lens.data.schema import MultipleChoiceItem

_STORY_CLOZE_SENTENCES = tuple(f"InputSentence{number}" for number in range(1, 5))
_STORY_CLOZE_ENDINGS = ("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")
_STORY_CLOZE_COLUMNS = (
    "InputStoryid",
    *_STORY_CLOZE_SENTENCES,
    *_STORY_CLOZE_ENDINGS,
    "AnswerRightEnding",
)

_STORY_CLOZE_WHAT = "a Story Cloze CSV file (InputStoryid, InputSentence1-4, two endings, answer)"


def load_story_cloze(path: str | Path) -> list[MultipleChoiceItem]:
    """Load a Story Cloze Test CSV file (ROCStories, as distributed to registered users).

    Columns ``InputStoryid``, ``InputSentence1`` to ``InputSentence4``,
    ``RandomFifthSentenceQuiz1``, ``RandomFifthSentenceQuiz2`` and ``AnswerRightEnding``
    (``1`` or ``2``). Each story becomes an item with ``id`` the story id, ``context`` the
    four sentences joined by single spaces, ``options`` the two endings and ``label`` the
    right ending minus one.
    """
    path = require_file(path, _STORY_CLOZE_WHAT)
    records = csv_records(path, _STORY_CLOZE_WHAT, _STORY_CLOZE_COLUMNS)
    return finish(path, _STORY_CLOZE_WHAT, [_story_cloze_item(record) for record in records])


def _story_cloze_item(record: Record) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=record.value("InputStoryid"),
        dataset="story_cloze",
        context=" ".join(record.value(column) for column in _STORY_CLOZE_SENTENCES),
        options=tuple(record.value(column) for column in _STORY_CLOZE_ENDINGS),
        label=record.label("AnswerRightEnding", FIRST_OR_SECOND),
    )


def _option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    return same_prefix(item.context, item.options)


register(
    MultipleChoiceDataset(
        name="story_cloze",
        load=load_story_cloze,
        option_prompts=_option_prompts,
        description='Story Cloze: "{the four sentences}", scoring " {ending}"',
        default_path=None,
        aliases=("storycloze",),
    )
)
