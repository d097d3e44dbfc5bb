"""A reward module whose own code fails at import, as a half-edited user module does."""

SCALE = 1 / 0


def f(completions, **kwargs):
    return [SCALE] * len(completions)
