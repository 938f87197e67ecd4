"""From a probe's text to token ids and the positions where features are read (DESIGN §2).

The prompt is rendered with the model's own chat template (generation prompt added); the
user's message is located by character offsets, so the same code works for any fast
tokenizer: ours, ChatML (SmolLM2), Llama-3.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smda_core.errors import InputError, SMDAError

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one chat-formatted prompt and the indices of its readable positions."""

    input_ids: tuple[int, ...]
    user_positions: tuple[int, ...]  # tokens of the user's message
    end_of_turn: int  # the end-of-turn token closing the user's message
    last: int  # last prompt token (predicts the first answer token)

    def read_positions(self, position: str) -> tuple[int, ...]:
        """Token indices pooled for `position` (one index for end_of_turn / last)."""
        if position == "end_of_turn":
            return (self.end_of_turn,)
        if position == "last":
            return (self.last,)
        return self.user_positions


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    return ids


def encode_prompt(tokenizer, prompt: str, *, name: str = "prompt", max_tokens: int = 512,
                  response: str | None = None) -> EncodedPrompt:
    """Render `prompt` as a user turn (plus generation prompt) and find its positions.

    `name` identifies the probe or pair in errors. Raises InputError for empty or too long prompts.
    """
    content = prompt.strip()
    if not content:
        raise InputError("empty prompt", path=name, field="prompt")
    messages = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    start = text.rfind(content)
    if start < 0:
        raise InputError("the chat template does not contain the user's message verbatim", path=name, field="prompt")
    end = start + len(content)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) > max_tokens:
        raise InputError(f"prompt has {len(ids)} tokens, more than max_prompt_tokens={max_tokens}", path=name, field="prompt")
    user = tuple(i for i, (s, e) in enumerate(offsets) if s < end and e > start)
    if not user:
        raise InputError("no token of the user's message found after chat formatting", path=name, field="prompt")
    specials = special_ids(tokenizer)
    eot = next((i for i in range(user[-1] + 1, len(ids)) if ids[i] in specials), None)
    if eot is None:
        raise InputError("no end-of-turn token after the user's message; does the chat template close turns?", path=name, field="prompt")
    return EncodedPrompt(tuple(ids), user, eot, len(ids) - 1)


def encode_pair(tokenizer, prompt: str, response: str, *, name: str = "pair", max_tokens: int | None = None,
                head: EncodedPrompt | None = None) -> tuple[list[int], int]:
    """Token ids of prompt + response as the model would see them in SFT, and where the response starts.

    The loss of SFT is taken on the tokens from that index on (response tokens, end-of-turn included).
    `max_tokens` is the model's context (:func:`context_length`); None checks no length. `head`: the
    prompt already encoded by :func:`encode_prompt` (a caller that reads the prompt too encodes it once).
    """
    if not response.strip():
        raise InputError("empty response", path=name, field="response")
    if head is None:
        head = encode_prompt(tokenizer, prompt, name=name, max_tokens=max_tokens if max_tokens is not None else 10**9)
    messages = [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": response.strip()}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(head.input_ids)
    if list(ids[:n_prompt]) != list(head.input_ids):
        # Templates that render the assistant header differently from the generation prompt:
        # fall back to prompt ids + tokenised response + end-of-turn.
        eot_id = head.input_ids[head.end_of_turn]
        ids = list(head.input_ids) + tokenizer(response.strip(), add_special_tokens=False)["input_ids"] + [eot_id]
    if max_tokens is not None and len(ids) > max_tokens:
        raise InputError(f"prompt + response are {len(ids)} tokens, more than the model's context of {max_tokens} "
                         "positions", path=name, field="response")
    if len(ids) <= n_prompt:
        raise InputError("response has no tokens", path=name, field="response")
    return list(ids), n_prompt


def encode_openings(tokenizer, openings: tuple[str, ...], *, what: str = "refusal_openings") -> tuple[tuple[int, ...], ...]:
    """Token ids of each opening; all must have the same length (disjoint events of one length add up)."""
    if not openings:
        raise InputError("at least one opening is needed", field=f"behaviour.{what}")
    encoded = tuple(tuple(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in openings)
    lengths = {len(e) for e in encoded}
    if len(lengths) != 1 or 0 in lengths:
        detail = ", ".join(f"'{o}'={len(e)}" for o, e in zip(openings, encoded))
        raise InputError(f"openings must all have the same (non-zero) token length: {detail}", field=f"behaviour.{what}")
    if len(set(encoded)) != len(encoded):
        raise InputError("two openings have the same tokens", field=f"behaviour.{what}")
    return encoded


def context_length(model_config: Any) -> int | None:
    """How many positions the model was built for (`max_position_embeddings` or its equivalent), None if unknown.

    Rotary models run past it without an error, on positions they never saw: a silent extrapolation.
    """
    for key in _CONTEXT_KEYS:
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The tokenizer and the model's config (no weights): enough to check lengths and openings before a run."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SMDAError(f"model '{path}': cannot read its tokenizer or config ({' '.join(str(exc).split())})") from None
    return tokenizer, config


def check_pair_lengths(tokenizer, rows: Iterable[tuple[str, str, str, int]], max_positions: int | None) -> None:
    """Every pair (prompt, response, source file, line) fits the model's context, or an error names its file and line.

    The field named is `prompt` when the prompt alone is too long, else `response`.
    """
    for prompt, response, source, line in rows:
        try:
            ids, n_prompt = encode_pair(tokenizer, prompt, response, name=str(source))
        except InputError as exc:  # the template's own complaints, placed at the pair's line
            raise InputError(str(exc).split(": ", 1)[-1], path=str(source), line=line, field=exc.field) from None
        if max_positions is not None and len(ids) > max_positions:
            field = "prompt" if n_prompt > max_positions else "response"
            raise InputError(f"prompt + response are {len(ids)} tokens ({n_prompt} in the chat-formatted prompt), more "
                             f"than the model's context of {max_positions} positions (max_position_embeddings): the "
                             "model never saw such positions; shorten or split this pair", path=str(source), line=line,
                             field=field)
