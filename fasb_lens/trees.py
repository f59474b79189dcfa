"""Answers that begin alike, run once: a prompt's candidate answers as one token tree.

Scoring several answers after the same prompt with one padded row per answer runs every
shared beginning once per answer and pads every row to the longest. A :class:`TokenTree`
holds each distinct answer prefix once instead: node 0 is the prompt's last token and
every other node extends its parent by one token. Fed as one row, each node attends to
the prompt and to its own ancestors (:meth:`TokenTree.attention`) and sits at its depth
after the prompt (``position_ids``), so every number is what a row of its own would
give, up to float rounding. :mod:`fasb_lens.tree_forward` packs many trees, each after its
own prompt, into one forward and reads their answers' log-probabilities.

Two answers share a node only where everything that reaches it agrees: the tokens, and
a ``key`` per token when the caller passes one (the steering strength at that position,
so that answers steered from different tokens part there).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(frozen=True)
class TokenTree:
    """Answers as a token tree.

    ``tokens[n]``, ``parent[n]`` (``-1`` for a root) and ``depth[n]`` (0 for a root) describe
    node ``n``; ``reads`` lists, for every token of every answer, ``(node, token, answer)``:
    the node whose output predicts it; ``paths[a]`` the nodes answer ``a`` is fed through
    (its root, then one per token: all of them with ``leaves``, else all but its last).
    """

    tokens: tuple[int, ...]
    parent: tuple[int, ...]
    depth: tuple[int, ...]
    reads: tuple[tuple[int, int, int], ...]
    paths: tuple[tuple[int, ...], ...]

    @classmethod
    def build(
        cls,
        last: int,
        answers: Sequence[Sequence[int]],
        *,
        keys: Sequence[Sequence[Hashable]] | None = None,
        leaves: bool = False,
    ) -> TokenTree:
        """The tree of ``answers`` (token ids) after a prompt ending in ``last``.

        ``keys[a]`` gives answer ``a`` one hashable per fed position (its root, then each
        token): nodes are shared only where keys agree too. ``leaves`` also feeds each
        answer's last token (nothing is predicted from it; its activations are read).
        """
        nodes: dict[tuple[tuple[int, Hashable], ...], int] = {}
        tokens: list[int] = []
        parent: list[int] = []
        depth: list[int] = []
        reads: list[tuple[int, int, int]] = []
        paths: list[tuple[int, ...]] = []
        for index, answer in enumerate(answers):
            answer = tuple(answer)
            key = tuple(keys[index]) if keys is not None else (None,) * (len(answer) + 1)
            if len(key) != len(answer) + 1:
                raise ValueError(
                    f"answer {index} has {len(answer)} tokens but {len(key)} keys "
                    f"(expected one for the prompt's last token and one per token)"
                )
            fed = (last, *answer)
            path: list[int] = []
            for k in range(len(answer) + 1 if leaves else len(answer)):
                node_key = tuple(zip(fed[: k + 1], key[: k + 1], strict=True))
                if node_key not in nodes:
                    nodes[node_key] = len(tokens)
                    tokens.append(fed[k])
                    parent.append(path[-1] if path else -1)
                    depth.append(k)
                path.append(nodes[node_key])
            reads += [(path[k], token, index) for k, token in enumerate(answer)]
            paths.append(tuple(path))
        if not tokens:  # no answer: the prompt's last token alone
            tokens, parent, depth = [last], [-1], [0]
        return cls(tuple(tokens), tuple(parent), tuple(depth), tuple(reads), tuple(paths))

    def __len__(self) -> int:
        return len(self.tokens)

    def sees(self, width: int | None = None) -> Bool[Tensor, "width width"]:
        """Which nodes each node attends to (its ancestors and itself); a padding column
        (up to ``width``) sees only itself, so that no row of the attention is empty."""
        sees = torch.eye(width or len(self), dtype=torch.bool)
        for node, up in enumerate(self.parent):
            if up >= 0:
                sees[node] |= sees[up]
        return sees

    def path_nodes(self, device: torch.device | str | None = None) -> Int[Tensor, "answers pos"]:
        """``[answers, pos]``: the node that fed each answer's each position (0 after)."""
        width = max((len(path) for path in self.paths), default=1)
        nodes = torch.zeros(len(self.paths), width, dtype=torch.long)
        for row, path in enumerate(self.paths):
            nodes[row, : len(path)] = torch.tensor(path, dtype=torch.long)
        return nodes.to(device)

    def attention(
        self,
        prompt: int | Bool[Tensor, " room"],
        *,
        width: int | None = None,
        room: int | None = None,
    ) -> Bool[Tensor, "1 1 width width_with_prompt"]:
        """The ``[1, 1, width, room + width]`` mask of a forward that feeds the tree after
        cached positions: every node sees its prompt and its ancestors. ``prompt`` is the
        number of cached positions (all of them the prompt; ``room``, at least ``prompt``,
        pads them) or a mask over the cached columns marking the prompt's (a row of a
        left-padded batch). ``width`` pads the nodes, for a row of a batch; nothing sees a
        padded node but itself."""
        width = width or len(self)
        if isinstance(prompt, int):
            columns = torch.arange(prompt if room is None else room) < prompt
        else:
            columns = prompt.bool().cpu()
        front = torch.zeros(width, len(columns), dtype=torch.bool)
        front[: len(self)] = columns
        return torch.cat([front, self.sees(width)], dim=1)[None, None]
