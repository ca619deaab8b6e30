# test_ood_ref.py: pq's count of out-of-distribution characters (method.md
# §3) against the recipe's own test in Python (pqref.bad_chars: NFD, drop what
# unicodedata.combining() gives a nonzero class, count the rest that is not
# ASCII or listed), through pq-eval's "ood" figure: the code points the
# recipe and a mark-stripping count disagree on, one file each, then every
# assigned code point of the BMP in one file.
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pqref import bad_chars  # noqa: E402

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
EVAL = os.path.join(os.environ.get("PQ_BIN", os.path.join(TOP, "bin")), "pq-eval")
failures = []

# "Word X word" for each: marks of combining class 0 (the recipe keeps and
# counts them), and class > 0 ones next to them (dropped)
LISTED = ["\u2122\ufe0f", "1\u20e3", "a\u20dd", "a\u034fb", "\u0915\u093f", "\u0e01\u0e31", "\u0915\u0903",
          "e\u0301", "\u0915\u093c", "\u00c5", "\u212b", "\u1e9b\u0323", "\U0001F44D\U0001F3FD", "\u00a0"]


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def ood_count(t, summaries):
    """How many of the summaries pq-eval finds an OOD character in."""
    p = os.path.join(t, "s.jsonl")
    with open(p, "w", encoding="utf-8") as f:
        for i, s in enumerate(summaries):
            f.write(json.dumps({"id": i, "article": "one two three four five six", "summary": s,
                                "correct": 3}, ensure_ascii=False) + "\n")
    r = subprocess.run([EVAL, "--format", "jsonl", "-b", p, p], capture_output=True, text=True)
    check(r.returncode == 0, f"pq-eval exited {r.returncode}: {r.stderr}")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    return round(rows[0]["ood"] * rows[0]["n"]) if rows else -1


def assigned_in_utf8proc():
    """Code points utf8proc (Unicode 13 in Debian 12) has a category for: Python's
    unicodedata may know newer ones, which neither side can be held to."""
    lib = ctypes.CDLL(ctypes.util.find_library("utf8proc") or "libutf8proc.so.2")
    lib.utf8proc_category.restype = ctypes.c_int
    lib.utf8proc_category.argtypes = [ctypes.c_int32]
    return lambda c: lib.utf8proc_category(c) != 0  # 0: UTF8PROC_CATEGORY_CN


def main():
    if not os.access(EVAL, os.X_OK):
        print(f"FAIL: {EVAL} not built")
        return 1
    with tempfile.TemporaryDirectory() as t:
        for x in LISTED:
            s = f"Word {x} word"
            want = 1 if bad_chars(s) else 0
            got = ood_count(t, [s])
            check(got == want, f"{s!r} ({' '.join('U+%04X' % ord(c) for c in x)}): pq-eval ood {got}, "
                               f"recipe {bad_chars(s)} bad characters")
        known = assigned_in_utf8proc()
        cps = [c for c in range(0x80, 0x10000)
               if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn" and known(c)]
        # a base letter before each, so a lone mark has something to sit on
        summaries = [f"word a{chr(c)} word" for c in cps]
        want = sum(1 for s in summaries if bad_chars(s))
        got = ood_count(t, summaries)
        if got != want:  # narrow it down to the first few code points that differ
            bad = []
            for c, s in zip(cps, summaries):
                if len(bad) < 10 and ood_count(t, [s]) != (1 if bad_chars(s) else 0):
                    bad.append("U+%04X" % c)
            check(False, f"BMP: pq-eval finds {got} summaries with OOD characters, the recipe {want}; first: {bad}")
        print(f"{len(LISTED)} listed sequences and {len(cps)} code points compared, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
