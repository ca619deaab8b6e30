# test_chat_templates: the chat goldens (tests/golden/chat/templates/) are
# what jinja2 renders today in transformers' environment (regenerated and
# compared), and pq-tokenize --chat gives the text jinja2 renders and the ids
# Hugging Face tokenizers give it, with --chat-template FILE, --chat-var,
# --date and --add-generation-prompt; and some fifty snippets, construct by
# construct (filters, tests, methods, loops, macros, whitespace control,
# printing of values), render as jinja2 renders them or are refused where it
# raises.
import datetime
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

TOP = os.environ.get("PQ_TOP", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
PY = os.environ.get("PQ_PY", sys.executable)

import tokenizers  # noqa: E402

# templates of one construct or a few, rendered over a 4-message conversation
SNIPPETS = [
    "{{ messages|length }} {{ messages[0].role|upper }} {{ messages[-1]['content']|lower }}",
    "{{ 'Hello World'.split(' ') }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(None, 1) }} {{ 'x'.rsplit('x', 1) }}",
    "{{ ' \\t pad \\n'.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'abc'.lstrip('a') }}|{{ 'abc'.rstrip('c') }}",
    "{{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'ß straße'.upper() }} {{ 'ÀÉ'.lower() }}",
    "{{ 'abcabc'.replace('b', 'X') }} {{ 'abcabc'.replace('b', 'X', 1) }} {{ 'ab'.replace('', '-') }}",
    "{{ 'abc'.startswith('a') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'abc'.find('c') }} {{ 'aaa'.count('a') }}",
    "{{ [1, 2, 3]|join(', ') }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [3, 1]|sort(reverse=true) }}",
    "{{ [1, 2, 2, 'a', 'A']|unique|list }} {{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }} {{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }}",
    "{{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }} {{ {'b': 1, 'a': 2}|items|list }}",
    "{{ messages|map(attribute='role')|join(' ') }} {{ messages|selectattr('role', 'equalto', 'user')|list|length }}",
    "{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }} {{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('even')|list }}",
    "{{ ['a', 'b']|map('upper')|list }} {{ [1, none, 2]|select('none')|list }} {{ [0, 1, '']|select|list }}",
    "{{ 3.7|int }} {{ '42'|int }} {{ 'x'|int }} {{ '3.5'|float }} {{ 7|float }} {{ -3|abs }} {{ 2.567|round(2) }} {{ 2.5|round }}",
    "{{ [1, 2, 3]|sum }} {{ [1, 5, 3]|max }} {{ [4, 2, 8]|min }} {{ 'a b  c'|wordcount }} {{ '<a href=\"x\">&</a>'|e }}",
    "{{ 'line1\\nline2\\n\\nline4'|indent(2) }}|{{ 'a\\nb'|indent(4, first=true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}",
    "{{ {'a': [1, 2.5, 'é', none, true]}|tojson }} {{ {'a': {'b': []}}|tojson(indent=2) }} {{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}",
    "{{ [1, 2]|tojson(separators=(',', ':')) }} {{ 'é\"\\\\'|tojson }} {{ 'é'|tojson(ensure_ascii=true) }} {{ 1e100|tojson }} {{ (1, 2)|tojson }}",
    "{{ none|default('d') }} {{ undefined_thing|default('d') }} {{ ''|default('d', true) }} {{ 0|d('z', boolean=true) }}",
    "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "{% for a, b in [(1, 2), (3, 4)] %}{{ a }}{{ b }}{{ loop.index }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{% endfor %}",
    "{% for m in messages %}{{ loop.cycle('x', 'y') }}{{ loop.previtem.role if loop.previtem is defined }}{% endfor %}",
    "{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}",
    "{% macro f(a, b=2, c='x') %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}{{ f(1) }}{{ f(1, 3) }}{{ f(1, c='y') }}{{ f(a=5, b=6) }}",
    "{% set x %}block {{ 1 + 1 }}{% endset %}{{ x }}|{% set y | upper %}up{% endset %}{{ y }}|{% filter trim %}  t  {% endfilter %}",
    "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 1 ~ 2 }} {{ 'a' * 3 }} {{ [1] * 2 }}",
    "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' in 'abc' }} {{ 1 not in [1] }} {{ 'k' in {'k': 1} }} {{ not true }} {{ none is none }} {{ 1 == 1.0 }} {{ true == 1 }}",
    "{{ x is defined }} {{ messages is iterable }} {{ messages is sequence }} {{ messages[0] is mapping }} {{ 'a' is string }} {{ 1 is number }} {{ 1.5 is integer }} {{ true is boolean }} {{ 4 is divisibleby 2 }}",
    "{{ 'abcdef'[1:4] }} {{ 'abcdef'[::2] }} {{ 'abcdef'[-2:] }} {{ [1, 2, 3, 4][::-2] }} {{ 'héllo'[1:3] }} {{ 'héllo'[-1] }} {{ 'héllo'|length }}",
    "{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('b', 'no') }} {{ {'a': 1}.keys()|list }} {{ {'a': 1}.values()|list }} {{ [1, 2].index(2) }}",
    "{{ 'yes' if messages else 'no' }} {{ 'x' if false }}| {{ 1 and 2 }} {{ 0 or 'b' }} {{ none or '' }}|",
    "{{ true }} {{ none }} {{ 1.0 }} {{ 1.5e-7 }} {{ 123456789012.0 }} {{ [1.0, 'a', none] }} {{ {'a': true} }} {{ ('a',) }} {{ \"it's\" }} {{ ['it\\'s'] }}",
    "{{ messages[0].content|trim|length }} {{ messages[5] is defined }} {{ messages[0].nope is defined }} {{ messages[0]['nope'] is undefined }}",
    "  {%- if true -%}  a  {%- endif -%}  b\n  {% if true %}\n    c\n  {% endif %}\n  {# comment #}\nd {{- ' e ' -}} f",
    "{% raw %}{{ not rendered }}{% endraw %} {%- raw -%}  x  {%- endraw -%} y",
    "{{ strftime_now('%Y-%m-%d %A %B %j') }}",
    "{{ 'a' + 1 }}",
    "{{ none.x }}|{{ none.x is defined }}",
    "{{ messages[0].x.y }}",
    "{{ raise_exception('custom: ' ~ messages|length) }}",
    "{{ [1, 2]|tojson }}{{ [1, 2]|map('string')|tojson }}",
    "{{ {'a': 1}.items()|tojson }}",
    "{{ messages|selectattr('role')|length }}",
    "{{ 1 / 0 }}",
    "{{ 'a\\u00e9\\x41\\101\\n' }}",
    "{{ \"multi\" 'concat' }} {{ 'q\"uote' }} {{ '\\\\' }}",
    "{% set a, b = [1, 2] %}{{ a + b }}{% set c = 1, 2 %}{{ c }}",
    "{{ dict(a=1, b='x') }} {{ namespace(a=1).a }} {{ range(2, 10, 3)|list }} {{ range(3)|list }}",
    "{{ '%s' % 1 }}",
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}/{{ loop.length }} {% endfor %}",
    "{{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 2 > 1.5 }} {{ 'x' > 1 }}",
    "{{ '  a  ' | trim('a ') }}|{{ 'ab' | trim('') }}|",
    'a\n  {% if true %}\n  b\n  {% endif %}\n  c',
    'a  {% if true %}  b  {% endif %}  c',
    'a\n    {%+ if true %}b{% endif %}\n',
    '  {# c #}\nx\n  {#- c -#}  \n  y',
    '{% if true %}\n\n{% endif %}z',
    "{{ 'a' }}\n{{ 'b' }}\n",
    '{%- for m in messages -%}\n  {{ m.role }}\n{%- endfor %}',
    '{% for m in messages %}\n    {{- m.role }}\n{% endfor %}',
    '\t{% set x = 1 %}\t{{ x }}',
    'x {% set y = 2 -%}   \n   {{ y }}',
    "{% macro m(x) %}<{{ x }}>{% endmacro %}{% macro n(y) %}{{ m(y ~ '!') }}{% endmacro %}{{ n('a') }}",
    '{% set g = 1 %}{% macro m() %}{{ g }}{% endmacro %}{% set g = 2 %}{{ m() }}',
    '{% for i in [1, 2] %}{% for j in [3, 4] %}{{ loop.index }}{{ i }}{{ j }} {% endfor %}{{ loop.index }}{% endfor %}',
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}{{ sys }}|{{ rest|length }}",
    '{% for m in messages %}{% set x = m.role %}{% endfor %}[{{ x }}]',
    '{{ messages[0].content is string and messages[0].content|length > 0 }}',
    "{{ not messages[0].content is string }} {{ messages[0].content is not none }} {{ 'sys' not in messages[0].content }}",
    "{{ (messages|last).content }} {{ messages[1:3]|map(attribute='role')|join }}",
    "{{ messages | selectattr('role', 'in', ['user', 'system']) | list | length }}",
    "{{ [{'a': 2}, {'a': 1}]|sort(attribute='a') }} {{ [{'a': 'x'}, {'a': 'x'}]|unique(attribute='a')|list }}",
    "{{ 'x' ~ none ~ true ~ 1.5 }}",
    "{{ {'a': 1, 'b': {'c': [1, {'d': none}]}}|tojson(indent=4) }}",
    '{{ [] |tojson(indent=2) }} {{ {} |tojson(indent=2) }} {{ [[]]|tojson(indent=2) }}',
    "{{ 'tab\\there' }} {{ 'a\\u2028b'|tojson }} {{ '\\x00\\x1f'|tojson }}",
    '{{ [1.5, 2.0, -0.0, 1e-10, 12345678901234567890.0] }}',
    '{{ 0.1 * 3 }} {{ 1 / 3 }} {{ 2 ** -1 }} {{ 2 ** 0.5 }} {{ 10 / 5 }}',
    '{{ messages|length is divisibleby 2 }} {{ 3 is odd }} {{ messages is not string }}',
    "{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}",
    '{% for m in messages %}{% if loop.index0 == 0 %}{% continue %}{% endif %}{{ m.role }}{% if loop.last %}!{% endif %}{% endfor %}',
    "{{ messages[0]['content'][1:-1] }} {{ messages[3].content[::-1] }}",
    "{{ 'a-b_c d'.split('-') }} {{ '  '.split() }} {{ ''.split(',') }} {{ 'a\\nb\\r\\nc'.splitlines() }}",
    "{{ 'Hello'.isupper() }} {{ 'HELLO'.isupper() }} {{ '123'.isdigit() }} {{ ' '.isspace() }} {{ 'abc'.isalpha() }}",
    "{{ ', '.join(['a', 'b']) }} {{ '-'.join('abc') }}",
    "{{ [1, 2, 3]|length }}{{ 'abc'|count }}{{ {'a': 1}|length }}",
    '{{ undefined_var }}|{{ undefined_var|string }}|{{ undefined_var|trim }}|{{ undefined_var|length }}|{{ undefined_var|list }}',
    '{% for x in undefined_var %}x{% else %}none{% endfor %}',
    '{{ undefined_var is iterable }} {{ undefined_var is sequence }} {{ undefined_var == undefined_other }}',
    "{{ messages[0].content|safe + '<x>' }} {{ '<x>' + 'y'|safe }} {{ ('a'|safe) ~ '<' }}",
    "{{ 'A'|lower|safe|upper }}",
    "{{ {'k': 'v'}['k'] }} {{ {'k': 'v'}.k }} {{ {1: 'one'}[1] }} {{ [1,2][5] is defined }}",
    "{{ {'items': 3}['items'] }} {{ {'items': 3}.items()|list }}",
    "{{ 'abc' * 0 }}|{{ [1] * -1 }}|{{ 2 * 'ab' }}",
    '{{ true + true }} {{ 1 + 1.5 }} {{ -(-3) }} {{ +4 }}',
    "{{ '%5s|%-5s|%05d|%.2f|%x|%r' % ('a', 'b', 42, 3.14159, 255, 'q') }}",
    '{{ (1, 2) + (3,) }} {{ [1] + [2] }}',
    '{% if messages %}{% elif false %}x{% else %}y{% endif %}e',
    '{%- if false -%} a {%- elif true -%} b {%- endif -%}',
    "{{ 'x' if messages|length > 10 else 'y' if messages|length > 3 else 'z' }}",
    '{{ messages[0] }}',
    '{{ messages[0].items()|list }}',
    "{{ 'é'|length }} {{ '🙂'|length }} {{ '🙂a'[1] }} {{ 'aé'|upper }} {{ 'Ǆ'|lower }} {{ 'ǆx'|title }}",
    '{{ "they\'re bill\'s-friends (x) ß"|title }} {{ "they\'re ßa".title() }} {{ \'ßa\'.capitalize() }}',
    "{{ '%-4s|%3s|%.1s|%5.1f|%-3d|%%' % ('é', 'ü', 'éa', 2.25, 7) }}",
]

failed = 0


def fail(msg):
    global failed
    failed += 1
    print("FAIL " + msg)


# the generator, as a module: its environment is the reference
path = os.path.join(TOP, "scripts", "gen-chat-goldens")
gen = importlib.util.module_from_spec(importlib.util.spec_from_loader("gen", importlib.machinery.SourceFileLoader("gen", path)))
gen.__loader__.exec_module(gen)

r = subprocess.run([PY, path, "--check"], capture_output=True, text=True)
if r.returncode:
    fail("goldens differ from jinja2 now: " + r.stderr[-2000:])

with tempfile.TemporaryDirectory() as d:
    model = os.path.join(d, "m")
    subprocess.run([PY, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", "llama", "--out", model],
                   check=True, capture_output=True)
    cfg = json.load(open(os.path.join(model, "tokenizer_config.json")))
    tok = tokenizers.Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    convs = [[gen.U("Hi")], [gen.U(" x \n"), gen.A("y"), gen.U("héllo 🙂")], [gen.U("a"), gen.U("b")], [gen.S("s"), gen.U("u")]]
    qwen3 = os.path.join(TOP, "tests", "fixtures", "templates", "Qwen-Qwen3-0.6B.jinja")
    llama32 = os.path.join(TOP, "tests", "fixtures", "templates", "meta-llama-Llama-3.2-3B-Instruct.jinja")
    runs = [  # (pq-tokenize options, template source, extra variables, date)
        ([], cfg["chat_template"], {}, None),
        (["--add-generation-prompt"], cfg["chat_template"], {}, None),
        (["--chat-template", qwen3, "--chat-var", "enable_thinking=false", "--add-generation-prompt"],
         open(qwen3, encoding="utf-8").read(), {"enable_thinking": False}, None),
        (["--chat-template", llama32, "--date", "2025-03-09"], open(llama32, encoding="utf-8").read(), {}, "2025-03-09"),
    ]
    inp = os.path.join(d, "in.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for i, c in enumerate(convs):
            f.write(json.dumps({"id": str(i), "messages": c}, ensure_ascii=False) + "\n")
    for opts, src, extra, date in runs:
        gen.DATE = date or datetime.date.today().isoformat()
        env, _ = gen.environment()
        t = env.from_string(src)
        r = subprocess.run([os.path.join(BIN, "pq-tokenize"), "--model", model, "--chat", *opts, inp],
                           capture_output=True, text=True)
        got = {json.loads(l)["id"]: json.loads(l) for l in r.stdout.splitlines()}
        for i, c in enumerate(convs):
            kw = {"bos_token": cfg["bos_token"], "eos_token": cfg["eos_token"], "tools": None, "documents": None, **extra}
            try:
                want = t.render(messages=c, add_generation_prompt="--add-generation-prompt" in opts, **kw)
            except Exception as ex:
                if str(i) in got:
                    fail(f"{opts} conversation {i}: jinja2 raises {ex}, pq-tokenize rendered")
                elif str(ex) not in r.stderr:
                    fail(f"{opts} conversation {i}: jinja2 raises {ex}; pq-tokenize says {r.stderr}")
                continue
            g = got.get(str(i))
            if not g:
                fail(f"{opts} conversation {i}: rejected: {r.stderr}")
            elif g["text"] != want:
                fail(f"{opts} conversation {i}: text {g['text']!r}, jinja2 {want!r}")
            elif g["ids"] != tok.encode(want, add_special_tokens=False).ids:
                fail(f"{opts} conversation {i}: ids differ from tokenizers'")

    # the language, construct by construct: pq-tokenize --chat renders what
    # jinja2 renders, or refuses where it raises
    one = os.path.join(d, "one.jsonl")
    msgs = [gen.S(" sys "), gen.U("Hi"), gen.A("Yo"), gen.U("héllo")]
    with open(one, "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "a", "messages": msgs}) + "\n")
    gen.DATE = "2024-07-26"
    env, _ = gen.environment()
    for i, sn in enumerate(SNIPPETS + ["{{ 10 ** 20 }}"]):
        try:
            want = env.from_string(sn).render(messages=msgs, add_generation_prompt=False, bos_token=cfg["bos_token"],
                                              eos_token=cfg["eos_token"], tools=None, documents=None)
        except Exception:
            want = None
        if sn == "{{ 10 ** 20 }}":
            want = None  # Python's integers are unbounded, pq's 64-bit: refused, never wrapped
        f = os.path.join(d, f"s{i}.jinja")
        with open(f, "w", encoding="utf-8") as fh:
            fh.write(sn)
        r = subprocess.run([os.path.join(BIN, "pq-tokenize"), "--model", model, "--chat", "--chat-template", f,
                            "--date", "2024-07-26", one], capture_output=True, text=True)
        got = json.loads(r.stdout)["text"] if r.stdout.strip() else None
        if got != want:
            fail(f"snippet {sn!r}: pq {got!r} ({r.stderr.strip()[-300:]}), jinja2 {want!r}")

    # the other tools that render take --chat-var and --date too, and refuse bad ones
    for tool, extra in (("pq-logp", []), ("pq-dpo", ["--no-save"])):
        for bad, msg in ((["--chat-var", "enable_thinking"], "NAME=JSON"), (["--date", "2023-02-29"], "YYYY-MM-DD")):
            r = subprocess.run([os.path.join(BIN, tool), "--model", model, *extra, *bad], input="",
                               capture_output=True, text=True)
            if r.returncode != 2 or msg not in r.stderr:
                fail(f"{tool} {bad}: exit {r.returncode}, {r.stderr.strip()}")

print("FAILED" if failed else "ok")
sys.exit(1 if failed else 0)
