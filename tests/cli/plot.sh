#!/bin/sh
# plot.sh: scripts/plot-training and scripts/plot-eval write well-formed SVG
# with one point per metrics line / round, placed where the values say
# (a higher value higher up, steps left to right), and refuse empty input.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
PATH=$PQ_BIN:$PATH
export PATH

# 7 training steps (loss going down, the step-4 loss highest after step 1)
# and 3 validation lines, as pq-dpo writes them.
awk 'BEGIN {
  split("0.6931 0.6 0.55 0.65 0.4 0.3 0.2", L, " ")
  for (s = 0; s <= 6; s += 3)
    printf "{\"split\":\"valid\",\"step\":%d,\"loss\":%g,\"rewards/margins\":%g,\"rewards/accuracies\":%g,\"pairs\":4}\n", s, 0.69 - s / 100, s / 10, s / 6
  for (s = 1; s <= 7; s++)
    printf "{\"step\":%d,\"epoch\":1,\"loss\":%s,\"rewards/chosen\":0.1,\"rewards/margins\":%g,\"rewards/accuracies\":%g,\"lr\":1e-05}\n", s, L[s], s * 0.25 - 0.5, (s % 3) / 2
}' >"$d/metrics.jsonl"
"$PQ_TOP/scripts/plot-training" -o "$d/train.svg" --title 'DPO <run> & co' "$d/metrics.jsonl"

# 3 rounds of pq-eval output on the fixtures' quiz results.
for k in 1 2 3; do
  pq-eval --seed "$k" --bootstrap 200 --format jsonl --baseline "$PQ_TOP/tests/fixtures/base.quiz.jsonl" \
    "$PQ_TOP/tests/fixtures/tuned.quiz.jsonl" >"$d/round$k.jsonl" 2>/dev/null
done
"$PQ_TOP/scripts/plot-eval" "$d/round1.jsonl" "$d/round2.jsonl" "$d/round3.jsonl" >"$d/eval.svg"

if command -v xmllint >/dev/null 2>&1; then
  xmllint --noout "$d/train.svg" "$d/eval.svg"
fi
"$PQ_PY" - "$d" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
d = sys.argv[1]
NS = "{http://www.w3.org/2000/svg}"
def panels(path):
    root = ET.parse(path).getroot()  # raises on malformed XML
    assert root.tag == NS + "svg", root.tag
    out = {}
    for g in root.iter(NS + "g"):
        if g.get("class") != "panel":
            continue
        title = g.find(NS + "text").text
        frame = g.find(NS + "rect")
        x0, y0 = float(frame.get("x")), float(frame.get("y"))
        x1, y1 = x0 + float(frame.get("width")), y0 + float(frame.get("height"))
        series = {}
        for s in g.findall(NS + "g"):
            pl = s.find(NS + "polyline")
            pts = [tuple(map(float, p.split(","))) for p in pl.get("points").split()] if pl is not None else None
            dots = [(float(c.get("cx")), float(c.get("cy"))) for c in s.findall(NS + "circle")]
            errs = s.findall(NS + "line")
            for x, y in (pts or []) + dots:
                assert x0 - 0.1 <= x <= x1 + 0.1 and y0 - 0.1 <= y <= y1 + 0.1, (path, title, x, y)
            assert int(s.get("data-points")) == len(pts if pts is not None else dots)
            series[s.get("data-series")] = (pts, dots, errs)
        out[title] = series
    return root, out

root, p = panels(d + "/train.svg")
assert "DPO <run> & co" in "".join(root.itertext())
assert sorted(p) == ["loss", "reward accuracy", "reward margin"], sorted(p)
rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
train = [r for r in rows if "split" not in r]
valid = [r for r in rows if "split" in r]
for title, key in (("loss", "loss"), ("reward margin", "rewards/margins"), ("reward accuracy", "rewards/accuracies")):
    s = p[title]
    assert sorted(s) == ["train", "valid"], s.keys()
    pts, dots, _ = s["train"]
    assert len(pts) == len(train) and dots == [], (title, len(pts))
    vp, vd, _ = s["valid"]
    assert len(vp) == len(valid) == len(vd) == 3, title
    xs = [x for x, _ in pts]
    assert xs == sorted(xs) and len(set(xs)) == len(xs), xs
    # the screen's y order is the values' order reversed
    vals = [r[key] for r in train]
    for i in range(len(vals)):
        for j in range(len(vals)):
            if vals[i] > vals[j] + 1e-9:
                assert pts[i][1] < pts[j][1], (title, i, j)
    # the step-0 validation dot sits left of the first training step
    assert vd[0][0] < pts[0][0]

root, p = panels(d + "/eval.svg")
assert sorted(p) == ["quiz accuracy", "win rate vs base"], sorted(p)
w = p["win rate vs base"]["win rate"]
assert len(w[0]) == 4 and len(w[1]) == 4 and len(w[2]) == 3, (len(w[0]), len(w[2]))  # rounds 0-3, 3 intervals
assert sorted(p["quiz accuracy"]) == ["score>=3", "score>=4"]
e = [json.loads(l) for l in open(d + "/round1.jsonl")]
base, tuned = e[0], e[1]
s3 = p["quiz accuracy"]["score>=3"][0]
assert (s3[1][1] < s3[0][1]) == (tuned["score_ge3"] > base["score_ge3"]), s3
assert (w[0][1][1] < w[0][0][1]) == (tuned["win_rate"] > 0.5)
EOF

# A PNG, where a converter is at hand (to look at; not needed to pass).
if command -v rsvg-convert >/dev/null 2>&1; then
  rsvg-convert "$d/train.svg" -o "$d/train.png"
  [ -s "$d/train.png" ] || { echo "rsvg-convert made no PNG"; exit 1; }
fi

# Nothing to plot, and usage errors.
: >"$d/empty.jsonl"
rc=0; "$PQ_TOP/scripts/plot-training" -o "$d/none.svg" "$d/empty.jsonl" 2>/dev/null || rc=$?
[ $rc -eq 1 ] && [ ! -e "$d/none.svg" ] || { echo "empty metrics: exit $rc, want 1 and no file"; exit 1; }
rc=0; "$PQ_TOP/scripts/plot-eval" "$d/empty.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 1 ] || { echo "empty eval: exit $rc, want 1"; exit 1; }
rc=0; "$PQ_TOP/scripts/plot-training" --bogus </dev/null >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "bad option: exit $rc, want 2"; exit 1; }
rc=0; "$PQ_TOP/scripts/plot-eval" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "plot-eval without input: exit $rc, want 2"; exit 1; }
echo ok
