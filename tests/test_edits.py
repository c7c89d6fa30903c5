"""Model output → edits: every answer format, on strings."""

import pytest

from dllm_cli import prompt
from dllm_cli.edits import Edit, EditParseError, parse, parse_edits, parse_unified_diff, path_from_line
from dllm_cli.errors import PatchError


def sr(path, search, replace, fence=None):
    block = prompt.search_replace(path, search, replace)
    if fence:
        head, rest = block.split("\n", 1)
        block = f"{head}\n{fence}\n{rest}```\n"
    return block


def test_search_replace_as_prompt_writes_it():
    text = "Sure.\n\n" + prompt.search_replace("src/a.py", "x = 1", "x = 2") + "\nDone.\n"
    assert parse_edits(text) == [Edit("src/a.py", "x = 1\n", "x = 2\n", "search_replace", 4)]


@pytest.mark.parametrize("path_line", ["a.py", "`a.py`", "**a.py**", "File: a.py", "### a.py", "a.py:",
                                       "**`a.py`**:"])
def test_path_line_variants(path_line):
    text = f"{path_line}\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE\n"
    [edit] = parse_edits(text)
    assert (edit.path, edit.search, edit.replace) == ("a.py", "old\n", "new\n")


def test_markers_five_to_nine_chars_and_crlf():
    text = "a.py\r\n<<<<< SEARCH\r\nold\r\n=========\r\nnew\r\n>>>>>>>>> REPLACE\r\n"
    assert parse_edits(text)[0].search == "old\n"
    assert parse_edits(text.replace("<<<<<", "<<<<"))[0:1] == []  # 4 chars is not a marker


def test_blocks_inside_a_fence_with_path_before_or_in_info():
    before = "a.py\n```python\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE\n```\n"
    info = "```python path=a.py\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE\n```\n"
    for text in (before, info):
        assert [(e.path, e.kind) for e in parse_edits(text)] == [("a.py", "search_replace")]


def test_markers_and_fences_inside_the_searched_text():
    md = "readme.md\n```\n<<<<<<< SEARCH\n```bash\nmake\n```\n=======\n```bash\nmake test\n```\n>>>>>>> REPLACE\n```\n"
    [edit] = parse_edits(md)
    assert edit.search == "```bash\nmake\n```\n" and edit.replace == "```bash\nmake test\n```\n"


def test_multiple_edits_per_file_and_multiple_files():
    text = ("a.py\n```python\n<<<<<<< SEARCH\none\n=======\n1\n>>>>>>> REPLACE\n\n"
            "<<<<<<< SEARCH\ntwo\n=======\n2\n>>>>>>> REPLACE\n```\n\n"
            "b.py\n<<<<<<< SEARCH\n\tthree\n=======\n\t3\n>>>>>>> REPLACE")  # tabs, no final newline
    edits = parse_edits(text)
    assert [(e.path, e.search, e.replace) for e in edits] == [
        ("a.py", "one\n", "1\n"), ("a.py", "two\n", "2\n"), ("b.py", "\tthree\n", "\t3\n")]


def test_divider_inside_replace_is_content_and_empty_sections():
    text = "a.rst\n<<<<<<< SEARCH\n=======\nTitle\n=======\n=======\n>>>>>>> REPLACE\n"
    [edit] = parse_edits(text)
    assert edit.search == "" and edit.replace == "Title\n=======\n=======\n"


def test_whole_file_in_a_fence_path_before_or_in_info():
    a = "Create it:\n\nsrc/new.py\n```python\nprint('hi')\n```\n"
    b = "```python title=src/new.py\nprint('hi')\n```\n"
    c = "```src/new.py\nprint('hi')\n```\n"
    for text in (a, b, c):
        assert parse_edits(text) == [Edit("src/new.py", None, "print('hi')\n", "whole_file", text.count(
            "\n", 0, text.index("```")) + 1)]


def test_longer_fence_keeps_inner_fences_and_code_samples_without_path_are_ignored():
    text = "Run:\n```bash\nmake\n```\nREADME.md\n````markdown\n# T\n```\nx\n```\n````\n"
    [edit] = parse_edits(text)
    assert edit.path == "README.md" and edit.replace == "# T\n```\nx\n```\n"


def test_text_without_edits_gives_nothing():
    assert parse_edits("I cannot do that.\n\nx = 1\n") == []
    assert parse("").edits == []


@pytest.mark.parametrize("text, words", [
    ("a.py\n<<<<<<< SEARCH\nold\n=======\nnew\n", "cut off"),
    ("a.py\n<<<<<<< SEARCH\nold\n", "cut off"),
    ("Change it like this\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE\n", "without a file path"),
    ("a.py\n<<<<<<< SEARCH\nold\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n", "new SEARCH marker"),
    ("a.py\n```python\nprint(1)\n", "never closed"),
    ("a.py\n```python\nimport os\n# ... existing code ...\n```\n", "elides code"),
])
def test_malformed_blocks_are_reported_never_guessed(text, words):
    result = parse(text)
    assert any(words in p.message for p in result.problems), result.problems
    with pytest.raises(EditParseError, match=words) as info:
        parse_edits(text)
    assert isinstance(info.value, PatchError) and info.value.exit_code == 3


def test_good_blocks_are_kept_next_to_a_reported_one():
    text = sr("a.py", "x", "y") + "\nb.py\n<<<<<<< SEARCH\nz\n"
    result = parse(text)
    assert [e.path for e in result.edits] == ["a.py"] and len(result.problems) == 1


DIFF = """diff --git a/src/m.py b/src/m.py
index 1111111..2222222 100644
--- a/src/m.py
+++ b/src/m.py
@@ -1,4 +1,4 @@
 import os
-x = 1
+x = 2
 y = 3
 z = 4
@@ -10,2 +10,3 @@ def f():
 a
+b
 c
"""


def test_unified_diff_hunks_become_search_replace_with_line_hints():
    edits = parse_unified_diff(DIFF)
    assert [(e.path, e.search, e.replace, e.line_hint) for e in edits] == [
        ("src/m.py", "import os\nx = 1\ny = 3\nz = 4\n", "import os\nx = 2\ny = 3\nz = 4\n", 0),
        ("src/m.py", "a\nc\n", "a\nb\nc\n", 9)]
    fenced = parse_edits("Here:\n```diff\n" + DIFF + "```\nThanks\n")
    assert [(e.search, e.replace, e.line_hint, e.source_line) for e in fenced] == [
        (e.search, e.replace, e.line_hint, e.source_line + 2) for e in edits]


def test_unified_diff_create_delete_and_no_newline():
    text = ("--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1,2 @@\n+hello\n+world\n\\ No newline at end of file\n"
            "--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n"
            "diff --git a/empty b/empty\nnew file mode 100644\nindex 0000000..e69de29\n")
    edits = parse_unified_diff(text)
    assert [(e.path, e.kind, e.search, e.replace) for e in edits] == [
        ("new.txt", "search_replace", "", "hello\nworld"),
        ("old.txt", "delete_file", "bye\n", ""),
        ("empty", "search_replace", "", "")]


def test_diff_with_wrong_counts_and_stripped_blank_context():
    text = "--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n a\n\n-b\n+B\n c\n\nThat's it.\n"
    [edit] = parse_edits(text)
    assert edit.search == "a\n\nb\nc\n" and edit.replace == "a\n\nB\nc\n"


def test_diff_renames_and_binary_are_refused():
    ren = "diff --git a/a.py b/b.py\nsimilarity index 100%\nrename from a.py\nrename to b.py\n"
    with pytest.raises(EditParseError, match="renames"):
        parse_unified_diff(ren)
    assert parse_unified_diff("hello\n") == []  # the caller says "no diff found"
    with pytest.raises(EditParseError, match="malformed hunk"):
        parse_unified_diff("--- a/x\n+++ b/x\n@@ -1 +1 @@\n*junk\n")


def test_path_from_line():
    assert path_from_line("`src/x.py`") == "src/x.py"
    assert path_from_line("Makefile") == "Makefile"
    assert path_from_line("__init__.py") == "__init__.py"
    for prose in ("Here is the change:", "Done.", "https://x.org/a.py", "stdin", ""):
        assert path_from_line(prose) is None
