#!/usr/bin/env bash
# crmvault benchmark: `restore latest` from a bucket a network away, at a year of nights against
# one snapshot (issue 21). A local folder answers a read in microseconds; a bucket answers each
# request after a round trip, so what a year costs there is the requests a restore makes (one
# per piece of a pack, per index, per dictionary) and how many it keeps in flight. The
# repositories bench/history.sh built (its cache: "repo", 365 nights, and "one", the last night
# alone) are copied into an S3 server on loopback (s3s-fs, the tests' server, as
# examples/s3_server.rs: every request answered after BENCH_S3_DELAY_MS), through `init
# --copy-from` and `copy`, as an admin adds a bucket; then the two restores take turns.
#
# usage: bench/s3_restore.sh        (after bench/history.sh)
#   BENCH_DIR          bench/history.sh's folder (default bench-work/history; its cache is read,
#                      never changed)
#   BENCH_S3_DELAY_MS  milliseconds before each answer (default 20: a bucket in the same region)
#   BENCH_REPOS        the cache's repositories to restore (default "repo one")
#   BENCH_ROUNDS       turns (default 5); medians (of an even number, the lower middle one)
#   DATABASE_URL       server to restore into (default postgres://postgres@127.0.0.1:5432);
#                      database crmvault_s3_restored is created and dropped there
# needs: psql, GNU time
set -euo pipefail
cd "$(dirname "$0")/.."
export TZ=UTC PGOPTIONS="-c client_min_messages=warning"

work=${BENCH_DIR:-$PWD/bench-work/history}
cache=$work/cache
delay=${BENCH_S3_DELAY_MS:-20}
repos=${BENCH_REPOS:-repo one}
rounds=${BENCH_ROUNDS:-5}
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
server=${server%/}
target=crmvault_s3_restored
[ -f "$cache/admin.key" ] || { echo "bench: no cache in $cache: run bench/history.sh first" >&2; exit 1; }

cargo build --release --quiet --bin crmvault --example s3_server
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
run=$work/s3
rm -rf "$run"
mkdir -p "$run"
cp -a "$cache/config" "$run/config"
# The bucket's files live in memory (/dev/shm when there is one): s3s-fs syncs every object it
# is given, and the copy is not what is measured.
bucket_root=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo "$run")/crmvault-s3.XXXXXX")
mkdir -p "$bucket_root/bench"
export CRMVAULT_CONFIG_DIR=$run/config AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchbench AWS_REGION=us-east-1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
server_pid=
serve() { # serve DELAY_MS: (re)starts the server on $port
    [ -z "$server_pid" ] || { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }
    "$bin/examples/s3_server" "$bucket_root" "127.0.0.1:$port" "$1" 2>>"$run/server.log" &
    server_pid=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
    echo "bench: the S3 server did not start (see $run/server.log)" >&2
    exit 1
}
trap 'kill $server_pid 2>/dev/null || true; wait $server_pid 2>/dev/null || true; rm -rf "$bucket_root"; psql -X -q -d "$server/postgres" -c "DROP DATABASE IF EXISTS $target WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
url() { echo "s3://bench/$1?endpoint=http://127.0.0.1:$port"; }

# Copied without delay (the copy is not measured), restored with it.
serve 0

for repo in $repos; do
    started=$(date +%s)
    "$bin/crmvault" init --quiet --copy-from "$cache/$repo" --repo "$(url "$repo")" >/dev/null
    "$bin/crmvault" copy --quiet --from "$cache/$repo" --to "$(url "$repo")" >/dev/null
    echo "== $repo copied into the bucket in $(( $(date +%s) - started )) s" >&2
done
serve "$delay"

: >"$run/results.tsv"
for round in $(seq 1 "$rounds"); do
    for repo in $repos; do
        psql -X -q -d "$server/postgres" -c "DROP DATABASE IF EXISTS $target WITH (FORCE)" -c "CREATE DATABASE $target" -c CHECKPOINT
        /usr/bin/time -f "%e %M" -o "$run/time" "$bin/crmvault" restore --quiet --repo "$(url "$repo")" \
            --identity "$cache/admin.key" --db "$server/$target" latest >/dev/null
        read -r seconds rss <"$run/time"
        printf '%s\t%s\t%s\n' "$repo" "$seconds" "$rss" >>"$run/results.tsv"
        printf '  round %d %-6s %7.2f s %8d KiB peak\n' "$round" "$repo" "$seconds" "$rss" >&2
    done
done

median() { awk -F'\t' -v r="$1" -v c="$2" '$1 == r { print $c }' "$run/results.tsv" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "restore latest from a bucket answering after $delay ms, $rounds rounds (medians):"
echo
echo "| repository | seconds | peak RSS | ratio to ${repos##* } |"
echo "|---|---|---|---|"
last=$(median "${repos##* }" 2)
for repo in $repos; do
    s=$(median "$repo" 2)
    printf '| %s | %s | %s MiB | %s |\n' "$repo" "$s" "$(( $(median "$repo" 3) / 1024 ))" \
        "$(awk -v a="$s" -v b="$last" 'BEGIN { printf "%.2f", a / b }')"
done
