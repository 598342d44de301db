"""How often cosine@init beats constant@init in archived baseline files (the prior alone, no agent).

    python benchmarks/results/prior_for_long_runs/prior_alone.py benchmarks/results/dev_long_suite_baselines.jsonl.gz
"""
import gzip
import json
import math
import sys

for path in sys.argv[1:]:
    rows = [json.loads(l) for l in gzip.open(path, "rt")]
    init = {}
    for r in rows:
        if abs(r["lr_factor"] - 1.0) < 1e-9 and r["method"] in ("constant", "cosine"):
            init[(r["task"], r["seed"], r["method"])] = r["final_val_loss"] if r["status"] == "ok" else float("inf")
    pairs = [(k[0], k[1]) for k in init if k[2] == "constant" and (k[0], k[1], "cosine") in init]
    below = sum(init[(t, s, "cosine")] < init[(t, s, "constant")] for t, s in pairs)
    harm = sum(init[(t, s, "cosine")] > 1.02 * init[(t, s, "constant")] for t, s in pairs)
    logs = [math.log(init[(t, s, "cosine")] / init[(t, s, "constant")]) for t, s in pairs if math.isfinite(init[(t, s, "cosine")]) and math.isfinite(init[(t, s, "constant")])]
    print(path, "pairs", len(pairs), "cosine@init below constant@init", below, "harm", harm, "geo ratio %.3f" % math.exp(sum(logs) / len(logs)))
