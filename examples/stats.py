"""Small statistics helpers: a playground for `dllm code` (see README.md).

The functions whose body is `...` are stubs: `dllm code "implement median" examples/stats.py`
asks the model to write just that body (anchored infilling).
"""


def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    return sum(values) / len(values)


def median(values):
    """Return the middle value of a non-empty list of numbers."""
    ...


def clamp(x, lo, hi):
    """Keep x between lo and hi."""
    return max(lo, min(hi, x))


def variance(values):
    """Return the population variance of a non-empty list of numbers."""
    ...
