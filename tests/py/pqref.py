# pqref.py: plain-Python references of pq's seeded randomness (FNV-1a,
# splitmix64 + xoshiro256**) and text counts, for the reference tests.
import re
import unicodedata

M64 = (1 << 64) - 1


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


class Rng:
    """lib/util.c's PqRng: splitmix64 seeding a xoshiro256**."""

    def __init__(self, seed):
        x = seed & M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M64

    def next(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.next() >> 11) * 2.0**-53

    def below(self, n):
        if n <= 1:
            return 0
        limit = M64 - M64 % n
        while True:
            x = self.next()
            if x < limit:
                return x % n


ALLOWED = set("\u2019\u2018\u2013\u2014\u201c\u201d\u2026\u2122\u00b0\u00c6\u00e6\u00a3\u20ac")


def bad_chars(s):
    """method.md §3, as the recipe's code counts: NFD, drop the characters
    unicodedata.combining() gives a nonzero class (not every mark: U+FE0F,
    U+20E3, U+0903 ... stay), then count what is neither ASCII
    letter/digit/whitespace/punctuation nor listed."""
    n = 0
    for c in unicodedata.normalize("NFD", s):
        if unicodedata.combining(c):
            continue
        o = ord(c)
        if o < 0x80 and (0x21 <= o <= 0x7E or c in " \t\n\r\x0b\x0c"):
            continue
        if c in ALLOWED:
            continue
        n += 1
    return n


def words(s):
    return len(s.split())


# method.md §3: the judge's reply lines look like "Q3) B" or "Q3) Unsure.";
# the recipe reads only that form (the line stripped with str.strip(), so
# Unicode whitespace too), and a question without one counts as Unsure.
RECIPE_ANSWER = re.compile(r"Q([0-9]+)\)\s*(?:([A-E])(?![A-Za-z0-9])|Unsure)")


def recipe_answers(reply, n):
    """The answers as the recipe's parser reads them: "A".."E" or "Unsure"."""
    answers = ["Unsure"] * n
    for line in reply.split("\n"):
        m = RECIPE_ANSWER.match(line.strip())
        if m and 1 <= int(m.group(1)) <= n:
            answers[int(m.group(1)) - 1] = m.group(2) or "Unsure"
    return answers
