"""How often cosine@init beats constant@init in archived baseline files (the prior alone, no agent).

    python benchmarks/results/prior_for_long_runs/prior_alone.py benchmarks/results/dev_long_suite_baselines.jsonl.gz
"""
import gzip
import json
import math
import sys

for path in sys.argv[1:]:
    at_users_lr = {}  # (task, seed, method) -> final val loss at the user's LR (inf where the run failed)
    for line in gzip.open(path, "rt"):
        run = json.loads(line)
        if abs(run["lr_factor"] - 1.0) < 1e-9 and run["method"] in ("constant", "cosine"):
            loss = run["final_val_loss"] if run["status"] == "ok" else math.inf
            at_users_lr[(run["task"], run["seed"], run["method"])] = loss
    pairs = [(at_users_lr[(t, s, "cosine")], loss) for (t, s, m), loss in at_users_lr.items()
             if m == "constant" and (t, s, "cosine") in at_users_lr]
    below = sum(cosine < constant for cosine, constant in pairs)
    harm = sum(cosine > 1.02 * constant for cosine, constant in pairs)
    logs = [math.log(cosine / constant) for cosine, constant in pairs if math.isfinite(cosine) and math.isfinite(constant)]
    ratio = f"{math.exp(sum(logs) / len(logs)):.3f}" if logs else "n/a"
    print(f"{path}: {len(pairs)} pairs, cosine@init below constant@init {below}, harm {harm}, geo ratio {ratio}")
