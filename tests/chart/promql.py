#!/usr/bin/env python3
"""The chart's PromQL for promtool and for a real Prometheus (tests/chart/check.sh, tests/e2e/e2e.sh).

  promql.py rules RENDERED.yaml OUT.yaml      the PrometheusRule's groups as a Prometheus rule file
  promql.py dashboard-rules DASHBOARD OUT.yaml every dashboard query as a recording rule, for
                                              `promtool check rules` to parse (Grafana's variables
                                              replaced by what their defaults expand to)
  promql.py queries DASHBOARD                 the same queries, one JSON object a line: panel, expr
"""
import json
import sys

import yaml

# What Grafana puts in place of its variables when every value is selected, for a query that must
# parse and, against the e2e's Prometheus (5 s scrapes), return data.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$namespace": ".*",
    "$workload": ".*",
}


def fail(msg):
    print(f"promql.py: {msg}", file=sys.stderr)
    sys.exit(1)


def expand(expr, textboxes):
    # Longest names first: $__rate_interval before $__range would not matter, $job before $jobs would.
    names = dict(VARIABLES, **{f"${k}": v for k, v in textboxes.items()})
    for name in sorted(names, key=len, reverse=True):
        expr = expr.replace("${" + name[1:] + "}", names[name]).replace(name, names[name])
    if "$" in expr:
        fail(f"a variable the tests do not know is left in: {expr}")
    return expr


def dashboard_queries(path):
    with open(path) as f:
        dash = json.load(f)
    textboxes = {
        v["name"]: v["query"]
        for v in dash.get("templating", {}).get("list", [])
        if v.get("type") == "textbox"
    }
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append({"panel": panel["title"], "ref": target["refId"], "expr": expand(target["expr"], textboxes)})
    if not out:
        fail(f"{path} has no queries")
    return out


def main():
    if len(sys.argv) < 3:
        fail(__doc__)
    cmd = sys.argv[1]
    if cmd == "rules":
        rules = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d and d.get("kind") == "PrometheusRule"]
        if len(rules) != 1:
            fail(f"{sys.argv[2]}: {len(rules)} PrometheusRules, want 1")
        with open(sys.argv[3], "w") as f:
            yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f, sort_keys=False)
    elif cmd == "dashboard-rules":
        rules = [
            {"record": f"leakhunt_dashboard:query_{i}", "expr": q["expr"]}
            for i, q in enumerate(dashboard_queries(sys.argv[2]))
        ]
        with open(sys.argv[3], "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    elif cmd == "queries":
        for q in dashboard_queries(sys.argv[2]):
            print(json.dumps(q))
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
