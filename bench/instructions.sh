#!/usr/bin/env bash
# Instructions the server executes per request and per delivered event,
# counted by valgrind's callgrind: a figure that does not move with the
# machine's load, for comparing two builds of small changes that the timed
# benchmark cannot tell apart on a shared machine. User space only (the
# kernel's share, the sockets, is not counted), and valgrind runs the
# server's threads one at a time, so batches and wake-ups differ from a
# real run: compare builds with it, never with a timed figure.
#
#   bench/instructions.sh SERVER [REQUESTS] [SUBSCRIBERS] [EVENTS]
#
# SERVER is a release build of `simplechat` (a build with debug line
# tables, e.g. CARGO_PROFILE_RELEASE_DEBUG=line-tables-only and
# CARGO_PROFILE_RELEASE_STRIP=false, lets `callgrind_annotate` name the
# functions in the data it leaves). It is started on a fresh data
# directory, seeded with 100 messages, warmed up, then for each figure the
# counters are zeroed, the load is sent, and the counters are dumped:
#   - GET /api/messages, GET / and POST /api/messages: REQUESTS (300) each,
#     one after the other on one connection;
#   - the fan-out: SUBSCRIBERS (200) event streams, then EVENTS (50) posts
#     one after the other; the figure is per delivered event, and includes
#     the posts.
# Needs valgrind (callgrind_control), curl and timeout.
set -euo pipefail

server=${1:?usage: bench/instructions.sh SERVER [REQUESTS] [SUBSCRIBERS] [EVENTS]}
requests=${2:-300}
subscribers=${3:-200}
events=${4:-50}
for tool in valgrind callgrind_control curl timeout; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
  echo "callgrind data: $work" >&2
}
trap cleanup EXIT

(cd "$work" && exec env -u MONGO_URI SIMPLECHAT_ADDRESS=127.0.0.1 SIMPLECHAT_PORT="$port" \
  SIMPLECHAT_DATA_DIR="$work/store" SIMPLECHAT_MAX_CONNECTIONS=$((subscribers + 64)) \
  SIMPLECHAT_MAX_CONNECTIONS_PER_CLIENT=0 ROCKET_LOG_LEVEL=critical \
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" "$server" serve \
  >"$work/server.log" 2>&1) &
pid=$!
for _ in $(seq 1 300); do
  curl -fs "$base/healthz" >/dev/null && break
  sleep 0.2
done
curl -fs "$base/healthz" >/dev/null || { echo "the server did not start" >&2; exit 1; }

# N copies of a URL: curl sends them one after the other on one connection.
urls() { local i; for ((i = 0; i < $2; i++)); do printf '%s\n' "$1"; done; }
get() { urls "$base$1" "$2" | xargs curl -fs >/dev/null; }
post() {
  urls "$base/api/messages" "$1" |
    xargs curl -fs -H 'Content-Type: application/json' \
      -d '{"name":"bench","text":"fanout seq=1 sent_us=1"}' >/dev/null
}
# Lines that start with $1, over every subscriber's stream.
lines() { cat "$work"/subscriber.* | grep -c "^$1" || true; }
# Instructions counted since the last zeroing, over all threads.
counted() {
  callgrind_control -d "$pid" >/dev/null 2>&1
  local newest
  newest=$(find "$work" -name 'callgrind.*' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
  awk '/^(summary|totals):/ { print $2; exit }' "$newest"
}

post 100
get /api/messages 50
get / 50
post 50

for phase in "GET /api/messages" "GET /" "POST /api/messages"; do
  callgrind_control -z "$pid" >/dev/null 2>&1
  case $phase in
    "GET /api/messages") get /api/messages "$requests" ;;
    "GET /") get / "$requests" ;;
    *) post "$requests" ;;
  esac
  echo "$phase: $(($(counted) / requests)) instructions per request"
done

for ((i = 0; i < subscribers; i++)); do
  timeout 600 curl -fsN -0 "$base/api/events" >"$work/subscriber.$i" 2>/dev/null &
done
for _ in $(seq 1 600); do
  [ "$(lines ': connected')" -ge "$subscribers" ] && break
  sleep 0.2
done
callgrind_control -z "$pid" >/dev/null 2>&1
post "$events"
expected=$((subscribers * events))
for _ in $(seq 1 600); do
  delivered=$(lines 'event: message')
  [ "$delivered" -ge "$expected" ] && break
  sleep 0.2
done
echo "fan-out to $subscribers subscribers, $events events: $delivered of $expected delivered," \
  "$(($(counted) / expected)) instructions per delivered event"
