"""dllm_cli.infill: stub detection, whole-line splits and the canvas layout shared by training
and `dllm code`."""

from __future__ import annotations

import textwrap

import pytest

from dllm_cli import infill

SRC = textwrap.dedent('''\
    """Helpers."""
    import math


    def mean(xs):
        """Arithmetic mean."""
        ...


    class Box:
        def area(self):
            # TODO
            raise NotImplementedError

        def name(self):
            return "box"


    def norm(v):
        return math.sqrt(sum(x * x for x in v))


    def one_liner(): ...
    ''')


def test_functions_and_stubs():
    fs = {f.name: f for f in infill.functions(SRC)}
    assert set(fs) == {"mean", "area", "name", "norm"}  # one-liners are skipped
    assert fs["mean"].doc == "Arithmetic mean." and fs["mean"].indent == "    "
    assert SRC.splitlines()[fs["mean"].body_start].strip() == "..."
    assert [f.name for f in infill.functions(SRC) if infill.is_stub(SRC, f)] == ["mean", "area"]
    assert infill.functions("def broken(:\n") == []


@pytest.mark.parametrize("task, names", [
    ("implement mean", ["mean"]),
    ("write area and mean please", ["mean", "area"]),
    ("implement the stubs", ["mean", "area"]),       # no function named: every stub
    ("make norm faster", []),                         # names a function that is no stub
    ("implement norm", []),                           # idem, even with "implement"
    ("add logging", []),
])
def test_stub_regions(task, names):
    regions = infill.stub_regions([("m.py", SRC)], task)
    assert [r.name for r in regions] == names
    for r in regions:
        prefix, region, suffix = infill.split(SRC, r.start, r.end)
        assert prefix + region + suffix == SRC
        assert region.strip().splitlines()[-1].strip() in infill.STUB_LINES


def test_stub_regions_across_files():
    other = "def mean_of(xs):\n    return sum(xs) / len(xs)\n"
    files = [("a.py", other), ("m.py", SRC)]
    assert infill.stub_regions(files, "implement mean_of") == []      # named, but not a stub
    assert [r.path for r in infill.stub_regions(files, "implement the stubs")] == ["m.py", "m.py"]


def test_split_is_whole_lines():
    text = "a\r\nb\nc"
    assert infill.split(text, 1, 2) == ("a\r\n", "b\n", "c")
    assert infill.split(text, 0, 3) == ("", text, "")


@pytest.mark.parametrize("n_pre, n_suf, gen, context", [
    (10, 10, 16, 64), (0, 0, 16, 64), (500, 3, 32, 128), (3, 500, 32, 128), (500, 500, 32, 128),
    (1, 1, 126, 128)])
def test_canvas_layout(n_pre, n_suf, gen, context):
    eos = 0
    pre_ids, suf_ids = list(range(100, 100 + n_pre)), list(range(1000, 1000 + n_suf))
    pre, suf = infill.canvas(pre_ids, suf_ids, gen, context, eos)
    assert 1 <= len(pre) and len(pre) + gen + len(suf) <= context
    assert pre == ([eos] + pre_ids)[len([eos] + pre_ids) - len(pre):]   # the prefix's tail
    assert suf == (suf_ids + [eos])[:len(suf)]                            # the suffix's head
    if 1 + n_pre + gen + n_suf + 1 <= context:                            # it all fits
        assert pre == [eos] + pre_ids and suf == suf_ids + [eos]
    else:
        assert len(pre) + gen + len(suf) == context                       # nothing wasted
    with pytest.raises(ValueError):
        infill.canvas(pre_ids, suf_ids, context - 1, context, eos)
