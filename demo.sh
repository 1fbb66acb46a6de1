#!/usr/bin/env bash
# The cages demo on a fresh clone: build the example modules, start the demo cage on loopback,
# make calls (a result, a panic, a module bug), fix the bug by dropping a rebuilt module
# into modules/ while the cage keeps running, and run chains of calls.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ cage %s\n' "$*"; "$cage" "$@" || printf '(exit code %s)\n' "$?"; }

step "Building the cage binary and the example modules (cargo build)"
cargo build -p cage -p echo -p billing -p orders
cage=target/debug/cage
cp target/debug/libecho.so target/debug/libbilling.so target/debug/liborders.so modules/

step "Starting cage demo (cages/demo.toml, 127.0.0.1:7401); its log goes to data/demo.log"
mkdir -p data
if "$cage" modules demo >/dev/null 2>&1; then
    echo "a cage is already answering as demo on 127.0.0.1:7401; stop it first (it is not this demo's)"
    exit 1
fi
"$cage" run demo 2>data/demo.log &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    "$cage" modules demo >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat data/demo.log; echo "cage demo exited"; exit 1; }
    sleep 0.1
done
show modules demo

step "Sync calls"
show call demo echo.shout '"hello, cages"'
show call demo echo.echo '{"order": 42}'
show call demo echo.boom '"a deliberate panic"'
show call demo billing.charge '{"customer": "ann", "cents": 500}'

step "A queued call: durable before it is acknowledged, retried until it succeeds"
id=$("$cage" enqueue demo billing.charge '{"customer": "bo", "cents": 1200}')
echo "queued as $id"
sleep 0.5
show pending demo

step "Fixing billing: rebuild it without the rounding bug and drop it into modules/"
cargo build -p billing --no-default-features --target-dir target/demo-fixed
cp target/demo-fixed/debug/libbilling.so modules/libbilling.so
for _ in $(seq 100); do
    "$cage" call demo billing.charge '{"customer": "ann", "cents": 500}' >/dev/null 2>&1 && break
    sleep 0.1
done
show call demo billing.charge '{"customer": "ann", "cents": 500}'
show modules demo

step "The queued call's next retry runs on the fixed module (retry-now instead of waiting a minute)"
show retry-now "$id"
for _ in $(seq 100); do
    "$cage" show "$id" >/dev/null 2>&1 || break
    sleep 0.1
done
show pending demo

step "A chain of calls: each step gets the bag (inputs + every result so far), durably on a queue"
show chain demo 'orders.reserve | orders.charge' '{"qty": 2, "price": 5}' --queue retry
show chain demo 'orders.reserve | orders.charge' '{"qty": 2, "price": 5, "card": "declined"}' --queue retry
show call demo orders.fan_out '{"sleeps_ms": [300, 100, 200], "max_parallel": 2, "queue": "retry", "wait": "any_children"}'
show chains demo --all

step "Metrics: what the cage counted, in the Prometheus text format (GET /metrics)"
if command -v curl >/dev/null 2>&1; then
    curl -s http://127.0.0.1:7501/metrics | grep -E '^cage_(attempts_total|attempt_(successes|failures)_total|calls_dead_total|pending_calls)\{' || true
fi
echo "(the dashboard: run \`$cage dashboard\` and open the login link it prints; this cage's own is at http://127.0.0.1:7501/ui/)"

step "What the cage logged"
grep -E 'loaded version|swapped in|rejected|attempt 1 failed|done after' data/demo.log || true

# Put the shipped build back so the next run of the demo shows the bug again.
cp target/debug/libbilling.so modules/libbilling.so
step "Done: the cage served the fix without a restart"
