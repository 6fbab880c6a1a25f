#!/bin/bash
# Times `make run` or `make test` on a fresh clone, as README's first screen promises
# them, and records the result in benchmarks/results/make_<target>.json.
#
#   benchmarks/fresh_clone.sh run|test [clone directory]
#
# The clone sits beside this checkout by default, so ../shared/data/glue resolves as
# it does here. Install time (creating .venv) is measured apart from the target.
# The load average is sampled every 30 s: a timing taken beside other work is not a
# result, so check load_average in the file before quoting it.
set -uo pipefail

target=${1:?usage: fresh_clone.sh run|test [clone directory]}
case "$target" in run|test) ;; *) echo "target must be run or test" >&2; exit 2;; esac
src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
dest=${2:-$(dirname "$src")/tpjax-fresh-$target}

rm -rf "$dest"
git clone -q "$src" "$dest" || exit 1
cd "$dest" || exit 1
install=install
[ "$target" = test ] && install=install-test

(while sleep 30; do cut -d' ' -f1 /proc/loadavg; done) > load.log &
sampler=$!
t0=$(date +%s)
make "$install" > install.log 2>&1
install_rc=$?
t1=$(date +%s)
make "$target" 2>&1 | tee make.log
rc=${PIPESTATUS[0]}
t2=$(date +%s)
kill "$sampler"

python3 - "$target" "$src" "$dest" "$install_rc" "$rc" "$t0" "$t1" "$t2" <<'EOF'
import datetime, json, os, platform, subprocess, sys

target, src, dest = sys.argv[1:4]
install_rc, rc, t0, t1, t2 = map(int, sys.argv[4:])
load = [float(x) for x in open(os.path.join(dest, "load.log")).read().split()]
lines = [l.strip() for l in open(os.path.join(dest, "make.log")) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), platform.processor())
record = {
    "command": f"make {target}",
    "script": f"benchmarks/fresh_clone.sh {target}",
    "date": datetime.date.today().isoformat(),
    "commit": subprocess.check_output(["git", "-C", dest, "rev-parse", "HEAD"],
                                      text=True).strip(),
    "machine": {"cpu": cpu, "cores": os.cpu_count()},
    "exit_code": rc if install_rc == 0 else install_rc,
    "install_s": t1 - t0,
    "wall_s": t2 - t1,
    "final_line": lines[-1] if lines else "",
    "load_average": {"samples": len(load), "mean": round(sum(load) / max(len(load), 1), 2),
                     "max": max(load, default=0.0)},
}
summary = os.path.join(dest, "runs", "sst2", "summary.json")
if target == "run" and os.path.exists(summary):
  record["summary"] = json.load(open(summary))
out = os.path.join(src, "benchmarks", "results", f"make_{target}.json")
json.dump(record, open(out, "w"), indent=2)
print(f"wrote {out}: exit {record['exit_code']}, {record['wall_s']} s, "
      f"load {record['load_average']}")
EOF
exit "$rc"
