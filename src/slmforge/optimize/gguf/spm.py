"""SentencePiece-style tokenizers as llama.cpp's `llama` (SPM) tokenizer model.

Llama 2, Mistral 7B and Phi-3 ship a BPE in tokenizer.json that was converted from SentencePiece:
`byte_fallback` with the 256 `<0x00>`..`<0xFF>` tokens, spaces written as `▁` (a Replace
normalizer, often after a Prepend, or a Metaspace pre-tokenizer). llama.cpp tokenizes such a
vocabulary its own way, without merges: it splits text into characters and repeatedly merges
the adjacent pair whose merged text is a token with the highest score (the leftmost on ties);
what stays unmerged falls back to byte tokens. So the scores must order the pieces the way the
tokenizer.json merges do: a piece scores minus the rank of the first merge that makes it (in
the order of the scores SentencePiece gave the pieces, from which transformers derived those
merges), and a piece no merge makes scores below all of them. llama.cpp's own converter gives
every piece -1000 when it only has tokenizer.json, which merges left to right instead.

`LlamaSpm` re-does llama.cpp's tokenization (the special-token split, the space prefix, the
merge loop) in Python, so the export can check its ids against the Hugging Face tokenizer's
before writing anything: llama.cpp has one switch for the leading `▁` (at the start of the
text and after every special token, or nowhere), while Hugging Face tokenizers may add it only
at the start (Metaspace's "first" scheme, transformers' LlamaTokenizer with legacy=False), and
it strips whitespace after special tokens only for models named Phi-3 (tokenizer.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

SPACE = "▁"  # U+2581, SentencePiece's visible space
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
# Plain texts the tokenization check covers besides the chat prompts
PROBES = (
    "Hello world",
    " leading space",
    "two  spaces,\ta tab and a trailing space ",
    "lines\nand\n\nparagraphs\n",
    "unicode: café, naïve, Ελληνικά, 日本語 and 🙂",
    "digits 1234567890, 3.14 and -42",
)
CONVERSATIONS = (
    [{"role": "user", "content": "Where should I go in May?"}],
    [
        {"role": "system", "content": "You are a terse travel agent."},
        {"role": "user", "content": "Where should I go in May?"},
        {"role": "assistant", "content": "Lisbon: warm, not yet crowded."},
        {"role": "user", "content": "And for  three days\nonly?"},
    ],
)


def _steps(part: dict[str, Any] | None, kinds: str) -> list[dict[str, Any]]:
    """The steps of a normalizer or pre-tokenizer, a Sequence flattened."""
    if not part:
        return []
    if part.get("type") == "Sequence":
        return [s for p in part.get(kinds, []) for s in _steps(p, kinds)]
    return [part]


def is_sentencepiece_style(spec: dict[str, Any]) -> bool:
    """A BPE with byte fallback that writes spaces as `▁`."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    normalizers = _steps(spec.get("normalizer"), "normalizers")
    pre_tokenizers = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    replaces = any(
        s.get("type") == "Replace"
        and s.get("pattern", {}).get("String") == " "
        and s.get("content") == SPACE
        for s in normalizers
    )
    metaspace = any(
        s.get("type") == "Metaspace" and s.get("replacement") == SPACE for s in pre_tokenizers
    )
    return replaces or metaspace


def declared_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether tokenizer.json puts `▁` before the text (SentencePiece's dummy prefix)."""
    for step in _steps(spec.get("normalizer"), "normalizers"):
        if step.get("type") == "Prepend" and step.get("prepend") == SPACE:
            return True
    for step in _steps(spec.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme")
            return scheme in ("always", "first") if scheme else bool(step.get("add_prefix_space"))
    return False


def missing_byte_tokens(vocab: dict[str, int]) -> list[str]:
    return [token for token in BYTE_TOKENS if token not in vocab]


def merge_scores(merges: list[Any], tokens: list[str]) -> list[float]:
    """Each token's score: minus the rank of the first merge that makes it; tokens that no
    merge makes (characters, bytes, special and padding tokens) score below every merge."""
    index = {token: i for i, token in enumerate(tokens)}
    floor = -float(len(merges) + 1)
    scores = [floor] * len(tokens)
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = index.get(left + right)
        if token is not None and scores[token] == floor:
            scores[token] = float(-rank)
    return scores


@dataclass
class LlamaSpm:
    """llama.cpp's tokenization of an SPM vocabulary, with special tokens parsed (as llama.cpp
    does for chat prompts) and no BOS added."""

    tokens: list[str]
    scores: list[float]
    specials: list[str]  # CONTROL, USER_DEFINED and UNKNOWN tokens, matched in the text
    rstrip: frozenset[str]  # special tokens after which llama.cpp strips whitespace
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {token: i for i, token in enumerate(self.tokens)}

    def encode(self, text: str, add_space_prefix: bool) -> list[int]:
        ids: list[int] = []
        after_special = True  # llama.cpp: the start of the text counts as after a special
        for fragment in self._split(text):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
                continue
            if add_space_prefix and after_special:
                fragment = " " + fragment
            ids += self._merge(fragment.replace(" ", SPACE))
            after_special = False
        return ids

    def _split(self, text: str) -> list[str | int]:
        """The text cut at every special token, longest tokens first."""
        fragments: list[str | int] = [text] if text else []
        for special in sorted(self.specials, key=len, reverse=True):
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int):
                    cut.append(fragment)
                    continue
                pieces = fragment.split(special)
                for i, piece in enumerate(pieces):
                    if i > 0:
                        cut.append(self.index[special])
                        if special in self.rstrip:
                            piece = piece.lstrip(" \t\n\v\f\r")
                    if piece:
                        cut.append(piece)
            fragments = cut
        return fragments

    def _merge(self, text: str) -> list[int]:
        """llama.cpp's SPM merge loop on one fragment, then byte fallback."""
        index = self.index
        pieces = list(text)
        after = [*range(1, len(pieces)), -1]
        before = list(range(-1, len(pieces) - 1))
        queue: list[tuple[float, int, int, int]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = pieces[left] + pieces[right]
            if merged in index:
                heapq.heappush(queue, (-self.scores[index[merged]], left, right, len(merged)))

        for i in range(1, len(pieces)):
            push(i - 1, i)
        while queue:
            _, left, right, size = heapq.heappop(queue)
            if not pieces[left] or not pieces[right] or len(pieces[left] + pieces[right]) != size:
                continue  # one side was merged since
            pieces[left], pieces[right] = pieces[left] + pieces[right], ""
            after[left] = after[right]
            if after[right] >= 0:
                before[after[right]] = left
            push(before[left], left)
            push(left, after[left])
        ids: list[int] = []
        for piece in pieces:
            if piece in index:
                ids.append(index[piece])
            elif piece:
                ids += [index[BYTE_TOKENS[b]] for b in piece.encode("utf-8")]
        return ids


def check_texts(hf: Any) -> tuple[list[str], list[str]]:
    """(chat prompts rendered with the model's template, plain texts with special tokens)."""
    chats = []
    if isinstance(hf.chat_template, str):
        for messages in CONVERSATIONS:
            try:
                chats.append(
                    hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                )
            except Exception:  # a template may refuse a role (a system turn); the others remain
                continue
    specials = [str(t) for t in (hf.bos_token, hf.eos_token) if t]
    plain = [*PROBES, *(f"{s}Hi there{s} again" for s in specials)]
    return chats, plain


def fit_space_prefix(hf: Any, llama: LlamaSpm, declared: bool) -> tuple[bool, tuple[str, ...]]:
    """llama.cpp's `add_space_prefix`: the value under which it reproduces the Hugging Face ids
    on more chat prompts (how the export is used; plain texts when there is no chat template),
    the tokenizer.json's own choice on a tie. Returns it and the texts still tokenized
    differently."""
    chats, plain = check_texts(hf)

    def differing(texts: list[str], prefix: bool) -> list[str]:
        return [
            text
            for text in texts
            if llama.encode(text, prefix) != hf(text, add_special_tokens=False)["input_ids"]
        ]

    deciding = chats or plain
    prefix = min((declared, not declared), key=lambda p: len(differing(deciding, p)))
    return prefix, tuple(differing([*chats, *plain], prefix))
