"""Token trees: answers that begin alike share nodes, and only while their keys agree."""

from __future__ import annotations

import pytest

from fasb_lens.trees import TokenTree


def test_answer_tree_runs_shared_beginnings_once() -> None:
    tree = TokenTree.build(7, [(1, 2, 3), (1, 2, 4, 5), (6,)])
    assert tree.tokens == (7, 1, 2, 4)  # the prompt's last token, then "1", "1 2", "1 2 4"
    assert tree.parent == (-1, 0, 1, 2) and tree.depth == (0, 1, 2, 3)
    reads = [(0, 1, 0), (1, 2, 0), (2, 3, 0), (0, 1, 1), (1, 2, 1), (2, 4, 1), (3, 5, 1)]
    assert tree.reads == (*reads, (0, 6, 2))  # every answer token, read at its prefix's node
    sees = tree.sees(6).tolist()
    assert sees[3] == [True, True, True, True, False, False]
    assert sees[5] == [False] * 5 + [True]  # a padding column sees only itself


def test_keys_part_answers_and_leaves_feed_last_tokens() -> None:
    answers = [(1, 2, 3), (1, 2, 4), (1, 5)]
    keys = [(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 9.0, 9.0), (0.0, 0.0, 0.0)]
    tree = TokenTree.build(7, answers, keys=keys, leaves=True)
    # answers 0 and 1 share "7 1" but part at "2" (their keys differ there)
    assert tree.tokens == (7, 1, 2, 3, 2, 4, 5)
    assert tree.parent == (-1, 0, 1, 2, 1, 4, 1) and tree.depth == (0, 1, 2, 3, 2, 3, 2)
    assert tree.paths == ((0, 1, 2, 3), (0, 1, 4, 5), (0, 1, 6))
    assert tree.reads[3:6] == ((0, 1, 1), (1, 2, 1), (4, 4, 1))
    assert TokenTree.build(7, answers).paths == ((0, 1, 2), (0, 1, 2), (0, 1))  # no leaves
    mask = tree.attention(prompt=2)
    assert mask.shape == (1, 1, 7, 9) and mask[0, 0, :, :2].all()
    assert mask[0, 0, 5].tolist() == [True, True, True, True, False, False, True, True, False]
    with pytest.raises(ValueError, match="answer 0 has 3 tokens but 2 keys"):
        TokenTree.build(7, answers[:1], keys=[(0.0, 0.0)])
    assert TokenTree.build(7, []).tokens == (7,)
