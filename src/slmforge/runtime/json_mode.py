"""JSON mode (`response_format: {"type": "json_object"}`): decoding constrained to one JSON object.

`JsonPrefix` is a character-level pushdown automaton that accepts exactly the prefixes of a JSON
object (RFC 8259 syntax). `JsonConstraint` applies it to tokens: a token is allowed when its
text keeps the output a valid prefix, and generation ends as soon as the object is closed.
States are immutable tuples, so testing a candidate token never disturbs the committed state.

Token texts come from decoding each id after a fixed anchor token and removing the anchor's
text: that keeps the leading space SentencePiece and byte-level tokenizers attach to a token,
which decoding the id alone would drop.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# What the top of the stack expects next.
ROOT, VALUE, OBJ_FIRST, KEY, COLON, OBJ_NEXT, ARR_FIRST, ARR_NEXT = range(8)
WHITESPACE = " \t\n\r"
MAX_WHITESPACE_RUN = 16  # enough for pretty-printed nesting
LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
HEX = set("0123456789abcdefABCDEF")
ESCAPES = set('"\\/bfnrt')
NUMBER_ENDS = {"zero", "int", "frac", "exp"}

State = tuple[tuple[int, ...], tuple | None]  # (stack of expectations, lexical mode)


def _start_value(stack: tuple[int, ...], ch: str) -> State | None:
    """`ch` begins a value where one is expected (the expectation is already popped)."""
    if ch == "{":
        return (*stack, OBJ_FIRST), None
    if ch == "[":
        return (*stack, ARR_FIRST), None
    if ch == '"':
        return stack, ("str", 0)
    if ch == "-":
        return stack, ("num", "minus")
    if ch == "0":
        return stack, ("num", "zero")
    if ch.isdigit() and ch.isascii():
        return stack, ("num", "int")
    if ch in LITERALS:
        return stack, ("lit", LITERALS[ch])
    return None


def _structural(stack: tuple[int, ...], ch: str) -> State | None:
    """`ch` outside any string, number or literal."""
    if not stack:
        return None  # the object is complete; nothing may follow but the end
    top, rest = stack[-1], stack[:-1]
    if ch in WHITESPACE:
        # Nothing before the object, and bounded runs inside it: unbounded whitespace is the
        # classic way a model in JSON mode never ends.
        return None if top == ROOT else (stack, ("ws", 1))
    if top == ROOT:
        return ((*rest, OBJ_FIRST), None) if ch == "{" else None
    if top == VALUE:
        return _start_value(rest, ch)
    if top in (OBJ_FIRST, KEY):
        if ch == "}" and top == OBJ_FIRST:
            return rest, None
        if ch != '"':
            return None
        # after "," the OBJ_NEXT below KEY is still on the stack; after "{" it is pushed here
        following = (VALUE, COLON) if top == KEY else (OBJ_NEXT, VALUE, COLON)
        return (*rest, *following), ("str", 0)
    if top == COLON:
        return (rest, None) if ch == ":" else None
    if top == OBJ_NEXT:
        return {",": ((*stack, KEY), None), "}": (rest, None)}.get(ch)
    if top == ARR_FIRST:
        if ch == "]":
            return rest, None
        return _start_value((*rest, ARR_NEXT), ch)
    if top == ARR_NEXT:
        return {",": ((*stack, VALUE), None), "]": (rest, None)}.get(ch)
    return None


_NUMBER_STEPS = {
    "minus": lambda c: "zero" if c == "0" else "int" if c.isdigit() else None,
    "zero": lambda c: "dot" if c == "." else "e" if c in "eE" else None,
    "int": lambda c: "int" if c.isdigit() else "dot" if c == "." else "e" if c in "eE" else None,
    "dot": lambda c: "frac" if c.isdigit() else None,
    "frac": lambda c: "frac" if c.isdigit() else "e" if c in "eE" else None,
    "e": lambda c: "sign" if c in "+-" else "exp" if c.isdigit() else None,
    "sign": lambda c: "exp" if c.isdigit() else None,
    "exp": lambda c: "exp" if c.isdigit() else None,
}


def _in_string(stack: tuple[int, ...], escape: int, ch: str) -> State | None:
    """`escape`: 0 plain, 1 after a backslash, 2..5 = hex digits of \\uXXXX still to come + 1."""
    if escape == 0:
        if ch == '"':
            return stack, None
        if ch == "\\":
            return stack, ("str", 1)
        return (stack, ("str", 0)) if ord(ch) >= 0x20 else None
    if escape == 1:
        if ch == "u":
            return stack, ("str", 5)
        return (stack, ("str", 0)) if ch in ESCAPES else None
    if ch not in HEX:
        return None
    return stack, ("str", 0 if escape == 2 else escape - 1)


def step(state: State, ch: str) -> State | None:
    """The state after `ch`, or None when `ch` cannot continue a JSON object here."""
    stack, lex = state
    if lex is None:
        return _structural(stack, ch)
    kind, sub = lex
    if kind == "ws":
        if ch in WHITESPACE:
            return (stack, ("ws", sub + 1)) if sub < MAX_WHITESPACE_RUN else None
        return _structural(stack, ch)
    if kind == "str":
        return _in_string(stack, sub, ch)
    if kind == "lit":
        if ch != sub[0]:
            return None
        return stack, (("lit", sub[1:]) if len(sub) > 1 else None)
    following = _NUMBER_STEPS[sub](ch) if ch.isascii() else None
    if following is not None:
        return stack, ("num", following)
    if sub in NUMBER_ENDS:  # the number ended; `ch` is read as structure
        return _structural(stack, ch)
    return None


class JsonPrefix:
    """Feeds text through the automaton; `complete` once one whole object has been read."""

    def __init__(self) -> None:
        self.state: State = ((ROOT,), None)

    def after(self, text: str) -> State | None:
        state: State | None = self.state
        for ch in text:
            state = step(state, ch)
            if state is None:
                return None
        return state

    def accepts(self, text: str) -> bool:
        return bool(text) and self.after(text) is not None

    def feed(self, text: str) -> None:
        state = self.after(text)
        if state is None:
            raise ValueError(f"{text!r} does not continue a JSON object")
        self.state = state

    @property
    def complete(self) -> bool:
        return not self.state[0] and self.state[1] is None


@lru_cache(maxsize=4)
def token_texts(tokenizer: Any) -> tuple[str, ...]:
    """The text each token id adds after another token (see the module docstring)."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
    prefix = tokenizer.decode([anchor], skip_special_tokens=True)
    texts = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([anchor, token_id], skip_special_tokens=True)
        texts.append(text[len(prefix) :] if text.startswith(prefix) else "\ufffd")
    return tuple(texts)


class JsonConstraint:
    """Allows only tokens that keep the output a prefix of one JSON object."""

    def __init__(self, tokenizer: Any) -> None:
        self.texts = token_texts(tokenizer)
        self.prefix = JsonPrefix()

    def allows(self, token_id: int) -> bool:
        if token_id >= len(self.texts):
            return False  # padded vocabulary rows of the model beyond the tokenizer's
        text = self.texts[token_id]
        return "\ufffd" not in text and self.prefix.accepts(text)

    def allowed_mask(self, vocab_size: int) -> list[bool]:
        return [self.allows(token_id) for token_id in range(vocab_size)]

    def advance(self, token_id: int) -> None:
        self.prefix.feed(self.texts[token_id])

    @property
    def complete(self) -> bool:
        return self.prefix.complete
