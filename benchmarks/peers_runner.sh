#!/usr/bin/env bash
# Our kernel as the EXTRA_RUNNER of ../shared/bench/peers/run_all.sh, with every mode mapped:
#
#   EXTRA_RUNNER="$PWD/benchmarks/peers_runner.sh" ../shared/bench/peers/run_all.sh /tmp/peers.json
#   benchmarks/peers_runner.sh DATA_DIR --mode replay|quote_bid|quote_both|taker
#
# Run from the project root (needs .venv/bin/tickerml: `make test` or `make demo` makes it).
# Prints one JSON line with the peers' fields. The mapping, and how it differs from the
# peers (see their README):
#   replay      no strategy
#   quote_bid   market_maker, bid only: 0.001 BTC at the best bid, re-quoted every 100 book
#               messages (the peers count every market event, trades included), no skew
#   quote_both  market_maker, both sides (spot: it offers only what it holds, it cannot short)
#   taker       taker: a market order of 0.001 BTC every 1000th trade, alternating buy/sell
# Latency is set to the peers' constant 1 ms entry + 1 ms response, cash to 10M USDT (so
# that a spot account never runs out); our venue still models queue position, depletion of
# the displayed liquidity by our own fills, impact and toxicity, which the peers do not.
# TICKERML_LAYERS: plain (default: market-data validation and the Features sampling off,
# the same work as the peers), validated (validation on) or shipped (config/ as it is:
# validation and every feature on, a Features event per second).
set -euo pipefail
data="$1"; mode="${3:-replay}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tk="${TICKERML:-$root/.venv/bin/tickerml}"
[ -x "$tk" ] || { echo '{"peer": "tickerml", "error": "no .venv/bin/tickerml"}'; exit 1; }
common=(--param size=0.001 --param requote_every=100 --param skew_ticks=0 --param max_inventory=1000)
case "$mode" in
  replay) strat=(--strategy none) ;;
  quote_bid) strat=(--strategy market_maker "${common[@]}" --param sides=bid) ;;
  quote_both) strat=(--strategy market_maker "${common[@]}" --param sides=both) ;;
  taker) strat=(--strategy taker --param size=0.001 --param every=1000) ;;
  *) echo "{\"peer\": \"tickerml\", \"mode\": \"$mode\", \"error\": \"unknown mode\"}"; exit 1 ;;
esac
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
cp -r "$root/config" "$w/config"
sed -i 's/initial_cash: "10000"/initial_cash: "10000000"/' "$w/config/trading.yaml"
python3 - "$w/config/exchanges.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r"latency: \{[^}]*\}", "latency: {model: constant, entry_mean_ms: 1, entry_std_ms: 0, "
           "response_mean_ms: 1, response_std_ms: 0, spike_probability: 0}", s)
open(p, "w").write(s)
PY
"$root/.venv/bin/python" - "$w/config" "${TICKERML_LAYERS:-plain}" <<'PY'
import sys, yaml
d, layers = sys.argv[1], sys.argv[2]
if layers != "shipped":
    mon = yaml.safe_load(open(f"{d}/monitoring.yaml"))
    mon.setdefault("validation", {})["enabled"] = layers == "validated"
    yaml.safe_dump(mon, open(f"{d}/monitoring.yaml", "w"))
    tr = yaml.safe_load(open(f"{d}/trading.yaml"))
    tr.setdefault("features", {})["enabled"] = False
    yaml.safe_dump(tr, open(f"{d}/trading.yaml", "w"))
PY
book=$(ls "$data"/*incremental_book_L2*.csv.gz | head -1); trades=$(ls "$data"/*trades*.csv.gz | head -1)
t0=$(date +%s.%N)
"$tk" --config-dir "$w/config" import tardis --book "$book" --trades "$trades" \
  --journal "sqlite:///$w/j.db" -q >"$w/imp.log" 2>&1
t1=$(date +%s.%N)
taskset -c 0 "$tk" --config-dir "$w/config" replay --journal "sqlite:///$w/j.db" "${strat[@]}" \
  --stats-json "$w/s.json" -q >"$w/rep.log" 2>&1
"$tk" --config-dir "$w/config" audit --journal "sqlite:///$w/j.db" --format json >"$w/audit.json" 2>/dev/null || true
python3 - "$w/s.json" "$t0" "$t1" "$mode" "$w/j.db" <<'PY'
import json, sqlite3, sys
s = json.load(open(sys.argv[1]))
con = sqlite3.connect(sys.argv[5])
def count(kind):
    return con.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]
print(json.dumps({"peer": "tickerml", "mode": sys.argv[4], "events": s["events"],
                  "parse_s": round(float(sys.argv[3]) - float(sys.argv[2]), 3),
                  "engine_s": s["seconds"], "events_per_s": round(s["events_per_s"]),
                  "peak_rss_mb": s.get("peak_rss_mb"), "orders": count("OrderSubmitted"),
                  "fills": s.get("fills", 0), "cancels": count("CancelRequested"),
                  "rejects": count("OrderRejected"), "state_hash": s.get("state_hash")}))
PY
