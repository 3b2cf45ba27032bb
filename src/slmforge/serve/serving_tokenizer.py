"""vLLM's tokenizer endpoints (`/tokenizer_info`, `/tokenize`, `/detokenize`), so clients
such as lm-eval's remote tokenizer need no local copy of the tokenizer."""

from __future__ import annotations

from slmforge.serve.app import ServerState
from slmforge.serve.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from slmforge.serve.serving_completions import prompt_ids


def tokenizer_info(state: ServerState) -> TokenizerInfo:
    engine = state.ready().engine
    tokenizer = engine.tokenizer
    return TokenizerInfo(
        tokenizer_class=type(tokenizer).__name__,
        eos_token=tokenizer.eos_token,
        bos_token=tokenizer.bos_token,
        pad_token=tokenizer.pad_token,
        chat_template=tokenizer.chat_template,
        model_max_length=engine.context_length,
        vocab_size=len(tokenizer),
    )


def tokenize(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    engine = state.ready().engine
    if body.model is not None:
        state.adapter_for(body.model)
    if body.messages is not None:
        tokens = engine.prompt_ids([m.for_template() for m in body.messages])
    else:
        encoded = engine.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)
        tokens = encoded["input_ids"]
    return TokenizeResponse(count=len(tokens), max_model_len=engine.context_length, tokens=tokens)


def detokenize(state: ServerState, body: DetokenizeRequest) -> DetokenizeResponse:
    engine = state.ready().engine
    if body.tokens:
        prompt_ids(engine, body.tokens, 0, False)  # ids outside the vocabulary are a 400
    return DetokenizeResponse(prompt=engine.tokenizer.decode(body.tokens))
