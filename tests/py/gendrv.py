# gendrv.py: test-gen's driver (lib/gen.c, tests/unit) as the generation
# tests run it: requests as JSONL on stdin, one line a request and a last
# line of statistics on stdout.
import json
import os
import subprocess
import sys


def drive(driver, d, reqs, args, unset=(), env_set=None, base_env=None, timeout=None):
    """driver on model d with reqs (dicts) and its args; the environment is base_env (os.environ when None)
    without the variables in unset, then with env_set's. Exits the test on a failed run. Returns (the requests'
    lines, the statistics line, stderr)."""
    env = dict(os.environ if base_env is None else base_env)
    for k in unset:
        env.pop(k, None)
    env.update(env_set or {})
    inp = "".join(json.dumps(r) + "\n" for r in reqs)
    p = subprocess.run([driver, d, *args], input=inp, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode:
        sys.exit("test-gen %s failed (%d): %s" % (d, p.returncode, p.stderr))
    # (lines end at "\n" alone: a random model's text may hold U+2028 or U+0085, which JSON leaves as they are and
    # str.splitlines would split at)
    lines = [json.loads(x) for x in p.stdout.split("\n") if x]
    return lines[:-1], lines[-1], p.stderr
