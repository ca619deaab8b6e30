#!/usr/bin/env python3
# fake_server.py: a scriptable fake OpenAI-compatible judge/policy server for
# pq's tests and benchmarks: deterministic replies, fault injection by markers.
#
#   fake_server.py [--latency SEC] [--refuse-n] [--log FILE] [--port-file FILE]
#                  [--key KEY] [--die-with PID]
#
# Binds 127.0.0.1 on a free port, prints the port (and writes it to
# --port-file, atomically), serves POST /v1/chat/completions (and
# /chat/completions) with HTTP/1.1 keep-alive until killed.
#
# The reply depends on the last user message:
#   contains "Unsure"                       -> quiz answers, one "Qk) X" line per
#       rendered question ("Qk) ..." followed by "A. ..".."E. .." lines): the
#       option whose text (or most of its words) appears in the rest of the
#       prompt (the summary), else "Unsure";
#   contains "multiple-choice"/"multiple choice" -> a 5-question quiz in the
#       method.md shape, built from the article's sentences;
#   anything else                            -> a summary: 1 or 2 sentences of
#       the article, picked by the seed and the choice index.
# The article is what follows a "Text:"/"Article:" label, else the prompt's
# blank-line-separated blocks after the first (the instruction), quiz-format
# examples left out. In a quiz prompt the summary is what follows "Summary:".
#
# Faults, by markers anywhere in the messages (attempts are counted per
# distinct request body; [[fake:malformed1]] per distinct messages, so a
# retry with another seed is a second attempt):
#   [[fake:429]]        first attempt 429 with "retry-after-ms: 100"
#   [[fake:429s]]       first attempt 429 with "Retry-After: 1"
#   [[fake:500x2]]      first two attempts 500 (any [[fake:500xK]] works)
#   [[fake:malformed]]  every reply is prose, neither quiz nor answers
#   [[fake:malformed1]] only the first attempt is prose
#   [[fake:slow=S]]     sleep S seconds before replying, every attempt
#   [[fake:drop]]       first attempt: close the connection without a reply
#   [[fake:null]]       every reply's content is null
#   [[fake:endless]]    a 200 whose body never ends (until the client hangs up)
#   [[fake:401]]        always 401 "Incorrect API key"
#   [[fake:400]]        always 400 with a message
#   [[fake:badjson]]    first attempt: a 200 whose body is not JSON
#   [[fake:echo]]       the reply is the prompt's text between "<<<" and ">>>"
# Markers are removed from the text before replies are built from it.
# --refuse-n: n > 1 gets a 400 like llama.cpp's ("only n = 1 is supported").
# --log FILE: one JSON line per request: t, key, attempt, status, n, seed,
#   params (the body's other fields but messages and model), and conn (the
#   connection's serial number: keep-alive shows as few of them).
# --key KEY: requests without "Authorization: Bearer KEY" get a 401.
import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import sys
import time

MARKER = re.compile(r"\[\[fake:([a-z0-9]+)(?:=([0-9.]+))?\]\]")
SENT_SPLIT = re.compile(r"(?<=[.!?'\"])\s+(?=[A-Z0-9'\"(])")
QLINE = re.compile(r"^\s*\**Q(\d+)\s*[).:]\s*(.*)$")
OLINE = re.compile(r"^\s*\**([A-E])\s*[.)]\s*(.*)$")
LABEL = re.compile(r"^\s*(text|article|document|summary)\s*:\s*", re.I)
WORD = re.compile(r"[a-z0-9]+")

ENDLESS = b"endless"  # a sentinel: the reply streams until the connection closes

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error"}


def sentences_of(text):
    text = " ".join(text.split())
    sents = [s for s in SENT_SPLIT.split(text) if s.count(" ") >= 2]
    if len(sents) < 6:  # too few real sentences: windows of 12 words
        words = text.split()
        sents = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)] or ["(empty text)"]
    return sents


def is_format_example(block):
    return any(QLINE.match(l) or OLINE.match(l) for l in block.splitlines())


def article_of(prompt):
    lines = prompt.splitlines()
    for i, l in enumerate(lines):  # a "Text:" label: the article follows it
        m = LABEL.match(l)
        if m and m.group(1).lower() != "summary":
            rest = "\n".join([l[m.end():]] + lines[i + 1:]).strip()
            if rest:
                return rest
    blocks = [b.strip() for b in re.split(r"\n\s*\n", prompt) if b.strip()]
    blocks = [b for b in blocks if not is_format_example(b)] or blocks or [prompt]
    # "instructions\n\n{article}": the first block is the instruction
    return "\n\n".join(blocks[1:] if len(blocks) > 1 else blocks)


def h64(*parts):
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def make_quiz(article):
    sents = sentences_of(article)
    # Two questions on each of the first sentences, so that a two-sentence
    # summary of the lead can score up to 4 and a one-sentence one up to 2.
    plan = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1)]
    far = sents[4:] if len(sents) > 6 else sents  # distractors, away from the lead
    out = []
    di = 0
    for k, (s, part) in enumerate(plan):
        words = sents[s % len(sents)].split()
        half = words if len(words) < 16 else (words[:len(words) // 2] if part == 0 else words[len(words) // 2:])
        prefix, answer = " ".join(half[:3]), " ".join(half[3:8]) or " ".join(half[:5])
        opts = [answer]
        tries = 0
        while len(opts) < 5:
            w = far[di % len(far)].split()
            di += 1
            tries += 1
            off = (di * 7) % max(1, len(w) - 5)
            phrase = " ".join(w[off:off + 5])
            if tries > 50:
                phrase = "none of the other options (%d)" % len(opts)
            if phrase and all(phrase.lower() != o.lower() for o in opts) and phrase.lower() not in answer.lower():
                opts.append(phrase)
        pos = h64(article[:200], k) % 5
        opts[0], opts[pos] = opts[pos], opts[0]
        out.append("Q%d) Which words follow \"%s\" in the text?\n" % (k + 1, prefix) +
                   "".join("%s. %s\n" % ("ABCDE"[i], o) for i, o in enumerate(opts)) +
                   "\nQ%d Answer: %s\n" % (k + 1, "ABCDE"[pos]))
    return "\n".join(out)


def answer_quiz(prompt):
    questions = []  # [(number, {letter: text})]
    rest, in_summary, saw_summary = [], False, False
    for line in prompt.splitlines():
        m = QLINE.match(line)
        if m:
            questions.append((int(m.group(1)), {}))
            in_summary = False
            continue
        m = OLINE.match(line)
        if m and questions:
            questions[-1][1][m.group(1)] = m.group(2).strip()
            continue
        m = LABEL.match(line)
        if m:
            in_summary = m.group(1).lower() == "summary"
            saw_summary |= in_summary
            line = line[m.end():]
        elif re.match(r"^\s*questions\s*:", line, re.I):
            in_summary = False
            continue
        rest.append((in_summary, line))
    # With a "Summary:" label, the summary is what follows it; else every
    # line that is not part of a question.
    swords = WORD.findall(" ".join(l for s, l in rest if s or not saw_summary).lower())
    summary = " %s " % " ".join(swords)
    words = set(swords)
    lines = []
    for num, opts in questions:
        if len(opts) < 2:  # a format example ("Q1) X"), not a question
            continue
        best, best_score = "Unsure", 0.0
        for letter in "ABCDE":
            ow = WORD.findall(opts.get(letter, "").lower())
            if not ow:
                continue
            if len(" ".join(ow)) >= 4 and " %s " % " ".join(ow) in summary:
                score = 1.0
            else:
                ow = [w for w in ow if len(w) >= 4]
                score = sum(w in words for w in ow) / len(ow) if ow else 0.0
                if score < 0.75:
                    score = 0.0
            if score > best_score:
                best, best_score = letter, score
        lines.append("Q%d) %s" % (num, best))
    return "\n".join(lines)


def make_summary(sents, seed, index):
    x = h64(seed, index, sents[0][:100])
    lead = min(4, len(sents))
    first = x % lead
    if (x >> 8) & 1 or lead < 2:
        return sents[first]
    second = (x >> 16) % lead
    if second == first:
        second = (first + 1) % lead
    a, b = sorted((first, second))
    return sents[a] + " " + sents[b]


class State:
    def __init__(self, args):
        self.latency = args.latency
        self.refuse_n = args.refuse_n
        self.key = ("Bearer " + args.key) if args.key else None
        self.log = open(args.log, "a", buffering=1) if args.log else None
        self.attempts = {}
        self.cache = {}
        self.conns = 0


def error_body(msg, typ="invalid_request_error", code=None):
    return json.dumps({"error": {"message": msg, "type": typ, "code": code}}).encode()


def handle(state, body, auth=None, conn=0):
    """Returns (status, extra_headers, body bytes or None to drop, delay)."""
    key = hashlib.blake2b(body, digest_size=8).hexdigest()
    attempt = state.attempts.get(key, 0) + 1
    state.attempts[key] = attempt
    delay = state.latency
    n, seed, status, headers, out, params = 1, None, 200, (), b"", None
    try:
        req = json.loads(body)
        msgs = req["messages"]
        n = req.get("n", 1)
        seed = req.get("seed")
        if not isinstance(n, int) or n < 1 or not isinstance(msgs, list):
            raise ValueError("bad n or messages")
        params = {k: v for k, v in req.items() if k not in ("messages", "model", "n", "seed")}
        texts = [m.get("content") if isinstance(m.get("content"), str) else "" for m in msgs]
    except (ValueError, KeyError, TypeError, AttributeError) as ex:
        status, out = 400, error_body("fake: bad request body: %s" % ex)
        texts = None
    if texts is not None:
        joined = "\n".join(texts)
        marks = {}
        if "[[fake:" in joined:
            for m in MARKER.finditer(joined):
                marks[m.group(1)] = m.group(2)
        user = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        prompt = user[-1].get("content", "") if user else (texts[-1] if texts else "")
        if marks:
            prompt = MARKER.sub("", prompt)
        if "slow" in marks:
            delay += float(marks["slow"] or 1)
        k500 = next((int(k[4:]) for k in marks if re.fullmatch(r"500x\d+", k)), 0)
        if "401" in marks or (state.key and auth != state.key):
            status, out = 401, error_body("Incorrect API key provided: test.", code="invalid_api_key")
        elif "400" in marks:
            status, out = 400, error_body("fake: this request is invalid ([[fake:400]])")
        elif "drop" in marks and attempt == 1:
            status, out = 0, None
        elif "429" in marks and attempt == 1:
            status, out = 429, error_body("Rate limit reached (fake)", "rate_limit_error")
            headers = (("retry-after-ms", "100"),)
        elif "429s" in marks and attempt == 1:
            status, out = 429, error_body("Rate limit reached (fake)", "rate_limit_error")
            headers = (("Retry-After", "1"),)
        elif attempt <= k500:
            status, out = 500, error_body("fake internal error", "server_error")
        elif "badjson" in marks and attempt == 1:
            status, out = 200, b"<html><body>502 Bad Gateway (fake)</body></html>"
        elif "endless" in marks:
            status, out = 200, ENDLESS
        elif state.refuse_n and n > 1:
            status, out = 400, error_body("only n = 1 is supported")
        else:
            malformed = "malformed" in marks
            if "malformed1" in marks:
                mkey = hashlib.blake2b(json.dumps(msgs).encode(), digest_size=8).hexdigest() + "/m"
                state.attempts[mkey] = state.attempts.get(mkey, 0) + 1
                malformed = state.attempts[mkey] == 1
            if "echo" in marks and "<<<" in prompt and ">>>" in prompt:
                choices = [prompt[prompt.index("<<<") + 3:prompt.rindex(">>>")]] * n
            elif malformed:
                choices = ["I'm sorry, I cannot help with that."] * n
            elif "Unsure" in prompt:
                choices = [answer_quiz(prompt)] * n
            elif "multiple-choice" in prompt or "multiple choice" in prompt:
                art = article_of(prompt)
                q = state.cache.get(("q", art))
                if q is None:
                    q = state.cache[("q", art)] = make_quiz(art)
                choices = [q] * n
            else:
                sents = state.cache.get(("s", prompt))
                if sents is None:
                    sents = state.cache[("s", prompt)] = sentences_of(article_of(prompt))
                choices = [make_summary(sents, seed if seed is not None else 0, i) for i in range(n)]
            if "null" in marks:  # a content of null, whatever the prompt
                choices = [None] * n
            out = json.dumps({
                "id": "chatcmpl-fake-%s-%d" % (key, attempt), "object": "chat.completion",
                "created": int(time.time()), "model": req.get("model", "fake"),
                "choices": [{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                            for i, c in enumerate(choices)],
                "usage": {"prompt_tokens": len(joined) // 4 + 1,
                          "completion_tokens": sum(len(c or "") // 4 + 1 for c in choices),
                          "total_tokens": len(joined) // 4 + 1 + sum(len(c or "") // 4 + 1 for c in choices)},
            }).encode()
        if len(state.cache) > 4096:
            state.cache.clear()
    if state.log:
        state.log.write(json.dumps({"t": time.time(), "key": key, "attempt": attempt, "status": status,
                                    "n": n, "seed": seed, "params": params, "conn": conn}) + "\n")
    return status, headers, out, delay


class Conn(asyncio.Protocol):
    def __init__(self, state):
        self.state = state
        self.buf = b""
        self.busy = False
        self.transport = None
        self.paused = False
        self.streaming = False

    def connection_made(self, transport):
        self.transport = transport
        self.state.conns += 1
        self.serial = self.state.conns

    def connection_lost(self, exc):
        self.transport = None

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.streaming:
            self.stream()

    def stream(self):
        # [[fake:endless]]: 1 MiB at a time for as long as the client reads. Once the client has hung up,
        # write() neither sends nor pauses, and connection_lost waits for this loop to yield: is_closing()
        # ends it (without it the server spun here, serving no other connection, and the test timed out).
        while self.transport is not None and not self.transport.is_closing() and not self.paused:
            self.transport.write(b"a" * (1 << 20))

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            self.process()

    def process(self):
        # One request at a time per connection: replies stay in order.
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            parts = head[0].split()
            if len(parts) < 2:
                self.transport.close()
                return
            method, path = parts[0], parts[1]
            clen, close, auth = 0, parts[-1] == "HTTP/1.0", None
            for h in head[1:]:
                name, _, value = h.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    clen = int(value)
                elif name == "authorization":
                    auth = value.strip()
                elif name == "connection":
                    close = value.strip().lower() == "close"
                elif name == "expect" and "100" in value:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if len(self.buf) < end + 4 + clen:
                return
            body = self.buf[end + 4:end + 4 + clen]
            self.buf = self.buf[end + 4 + clen:]
            if method != "POST" or path.split("?")[0] not in ("/v1/chat/completions", "/chat/completions"):
                self.reply(404, (), error_body("fake: no route %s %s" % (method, path)), close)
                continue
            status, headers, out, delay = handle(self.state, body, auth, self.serial)
            if delay > 0:
                self.busy = True
                asyncio.get_running_loop().call_later(delay, self.delayed, status, headers, out, close)
            else:
                self.reply(status, headers, out, close)

    def delayed(self, status, headers, out, close):
        self.busy = False
        self.reply(status, headers, out, close)
        self.process()

    def reply(self, status, headers, out, close):
        if self.transport is None:
            return
        if out is None:  # dropped
            self.transport.close()
            self.transport = None
            return
        if out is ENDLESS:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                                 b'{"choices":[{"index":0,"message":{"role":"assistant","content":"')
            self.streaming = True
            self.stream()
            return
        ctype = "application/json" if out[:1] == b"{" else "text/html"
        head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status, REASONS.get(status, "Status"), ctype, len(out),
            "".join("%s: %s\r\n" % kv for kv in headers), "Connection: close\r\n" if close else "")
        self.transport.write(head.encode() + out)
        if close:
            self.transport.close()
            self.transport = None


async def watch_parent(pid):
    while True:
        await asyncio.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass


async def main():
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible server for pq tests")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before every reply")
    ap.add_argument("--refuse-n", action="store_true", help="400 on n > 1, like llama.cpp")
    ap.add_argument("--log", help="append one JSON line per request to FILE")
    ap.add_argument("--port-file", help="write the port to FILE (atomically)")
    ap.add_argument("--key", help="require this bearer key (else 401)")
    ap.add_argument("--die-with", type=int, help="exit when process PID is gone")
    args = ap.parse_args()
    state = State(args)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: os._exit(0))
    server = await loop.create_server(lambda: Conn(state), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()
    if args.die_with:
        loop.create_task(watch_parent(args.die_with))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
