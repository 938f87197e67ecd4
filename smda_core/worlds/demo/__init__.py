"""The embedded demo world: a tiny chat model with a refusal behaviour and a planted gap."""
