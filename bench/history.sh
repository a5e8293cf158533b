#!/usr/bin/env bash
# crmvault benchmark: a year of nights (issue 21). A database at scale 0.1 lives through 365 CRM
# days (bench/crm_day.sql with -v base_scale: linear growth, audit_log trimmed to 90 days' worth),
# each followed by a nightly backup timed 2026-01-01T01:00:00Z + N − 1 days (backup --time).
# Then, side by side in one run: snapshots, an unchanged backup and restore latest at 365
# snapshots (as the nights left them, and after the admin's prune --identity with nothing
# forgotten) against the same at 1 snapshot, verify, forget + prune against a repository that only
# ever held the kept snapshots, and restic (fed by pg_dump -Fp every night) doing the same
# housekeeping. Prints wall time, peak memory and ratios as a Markdown table.
#
# usage: bench/history.sh
#   DATABASE_URL  server to use (default postgres://postgres@127.0.0.1:5432); databases
#                 crmvault_history and crmvault_history_restored are created and replaced there.
#   BENCH_DIR     where the cache and the run go (default bench-work/history). The cache
#                 ($BENCH_DIR/cache: the repositories, restic's, the keys and the final database
#                 as pg_dump -Fc) is built once (long: BENCHMARKS.md says how long) and reused;
#                 remove it to build again. Each run works on copies of it ($BENCH_DIR/run).
#   BENCH_NIGHTS  nights to simulate when building (default 365)
#   BENCH_SCALE   the database's scale when building (default 0.1; smaller to try the script)
#   BENCH_ROUNDS  how many times the paired measurements take turns (default 3); medians
#   BENCH_TIMEOUT seconds after which a measured command is killed and reported (default 600)
# needs: psql, pg_dump, pg_restore, restic, GNU time (apt-get install postgresql-client restic time)
set -euo pipefail
cd "$(dirname "$0")/.."
export TZ=UTC

scale=${BENCH_SCALE:-0.1}
nights=${BENCH_NIGHTS:-365}
rounds=${BENCH_ROUNDS:-3}
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
server=${server%/}
work=${BENCH_DIR:-$PWD/bench-work/history}
cache=$work/cache
run=$work/run
db=crmvault_history
restored=crmvault_history_restored
policy=(--keep-daily 7 --keep-weekly 5 --keep-monthly 12)
export PGOPTIONS="-c client_min_messages=warning"
export RESTIC_PASSWORD=bench

for tool in psql pg_dump pg_restore restic /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postgresql-client restic time)" >&2; exit 1; }
done

cargo build --release --quiet
crmvault=${CARGO_TARGET_DIR:-$PWD/target}/release/crmvault
have_prune=$("$crmvault" prune --help >/dev/null 2>&1 && echo yes || echo no)

sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$server/$1" -c "$2"; }
size_of() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
# night_time N [FORMAT]: the synthetic time of night N, 01:00 UTC on 2026-01-01 + N − 1 days.
night_time() { date -u -d "2026-01-01 01:00:00 UTC + $(( $1 - 1 )) days" +"${2:-%Y-%m-%dT%H:%M:%SZ}"; }

# The nights a policy of --keep-daily 7 --keep-weekly 5 --keep-monthly 12 keeps after the last
# night, with restic's meanings (UTC buckets, ISO weeks): the newest snapshot of each of the last
# 7 days, 5 ISO weeks and 12 months that have one. One night a line, oldest first.
kept_nights() {
    local n day week month last_day="" last_week="" last_month="" days=7 weeks=5 months=12 keep
    for n in $(seq "$nights" -1 1); do
        read -r day week month <<<"$(night_time "$n" '%F %G-%V %Y-%m')"
        keep=no
        if [ "$day" != "$last_day" ] && [ "$days" -gt 0 ]; then days=$((days - 1)); keep=yes; fi
        if [ "$week" != "$last_week" ] && [ "$weeks" -gt 0 ]; then weeks=$((weeks - 1)); keep=yes; fi
        if [ "$month" != "$last_month" ] && [ "$months" -gt 0 ]; then months=$((months - 1)); keep=yes; fi
        last_day=$day last_week=$week last_month=$month
        [ "$keep" = no ] || echo "$n"
    done | sort -n
}

# ---------------------------------------------------------------------------------------------
# The cache: 365 nights into "repo" (and restic), the kept nights into "kept", the last into "one"
# ---------------------------------------------------------------------------------------------
build() {
    local started night time t0 t1 t2 t3 kept
    started=$(date +%s)
    rm -rf "$cache"
    mkdir -p "$cache"
    echo "== building the cache: scale $scale, $nights nights (bench/README.md)" >&2
    sql postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    sql postgres "CREATE DATABASE $db"
    psql -X -q -v ON_ERROR_STOP=1 -d "$server/$db" -f bench/crm_schema.sql >/dev/null
    psql -X -q -v ON_ERROR_STOP=1 -v scale="$scale" -d "$server/$db" -f bench/crm_generate.sql >/dev/null
    sql "$db" "SELECT sum(pg_table_size(oid)) FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r'" >"$cache/table_bytes.first"

    export CRMVAULT_CONFIG_DIR=$cache/config
    recipient=$("$crmvault" keygen -o "$cache/admin.key" 2>/dev/null)
    for repo in repo kept one; do
        "$crmvault" init --repo "$cache/$repo" --recipient "$recipient" >/dev/null
    done
    RESTIC_REPOSITORY=$cache/restic restic init -q
    kept_nights >"$cache/kept.nights"
    echo "  kept by the policy: nights $(tr '\n' ' ' <"$cache/kept.nights")" >&2

    printf 'night\tcrm_day_s\tcrmvault_s\trestic_s\trepo_bytes\trestic_bytes\n' >"$cache/nights.tsv"
    for night in $(seq 1 "$nights"); do
        time=$(night_time "$night")
        t0=$(date +%s.%N)
        psql -X -q -1 -v ON_ERROR_STOP=1 -v day="$night" -v base_scale="$scale" -d "$server/$db" \
            -f bench/crm_day.sql >/dev/null
        t1=$(date +%s.%N)
        "$crmvault" backup --quiet --db "$server/$db" --repo "$cache/repo" --time "$time" >/dev/null
        t2=$(date +%s.%N)
        pg_dump -Fp -d "$server/$db" |
            RESTIC_REPOSITORY=$cache/restic restic backup -q --stdin --stdin-filename crm.sql \
                --host bench --time "$(night_time "$night" '%Y-%m-%d %H:%M:%S')"
        t3=$(date +%s.%N)
        if grep -qx "$night" "$cache/kept.nights"; then
            "$crmvault" backup --quiet --db "$server/$db" --repo "$cache/kept" --time "$time" >/dev/null
        fi
        printf '%s\t%.2f\t%.2f\t%.2f\t%s\t%s\n' "$night" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" \
            "$(echo "$t3 - $t2" | bc)" "$(size_of "$cache/repo")" "$(size_of "$cache/restic")" >>"$cache/nights.tsv"
        if [ $((night % 30)) = 0 ] || [ "$night" = "$nights" ]; then
            echo "  night $night ($time): $(( $(date +%s) - started )) s so far" >&2
        fi
    done
    "$crmvault" backup --quiet --db "$server/$db" --repo "$cache/one" --time "$(night_time "$nights")" >/dev/null
    sql "$db" "SELECT sum(pg_table_size(oid)) FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r'" >"$cache/table_bytes.last"
    pg_dump -Fc -f "$cache/final.dump" -d "$server/$db"
    echo $(( $(date +%s) - started )) >"$cache/build_seconds"
    echo "  built in $(cat "$cache/build_seconds") s" >&2
    unset CRMVAULT_CONFIG_DIR
}

if [ -f "$cache/build_seconds" ]; then
    echo "== reusing the cache in $cache (built in $(cat "$cache/build_seconds") s)" >&2
    sql postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    sql postgres "CREATE DATABASE $db"
    pg_restore -j2 -d "$server/$db" "$cache/final.dump"
else
    build
fi
nights=$(($(wc -l <"$cache/nights.tsv") - 1))

# ---------------------------------------------------------------------------------------------
# Measurements, on copies of the cache
# ---------------------------------------------------------------------------------------------
rm -rf "$run"
mkdir -p "$run"
for what in repo one kept restic config; do cp -a "$cache/$what" "$run/$what"; done
cp -a "$cache/config" "$run/config-forget" # forget's repository copy: the pins of before the run
cp -a "$cache/config" "$run/config-nokey"
rm -f "$run"/config-nokey/repos/*/writer.key
# adopt CONFIG REPO: the copies measured are new places to the pins copied with them, on a
# machine pinning several repositories, which refuses such a place until its fingerprint is
# given once (docs/FORMAT.md, *Trust*): given here, unmeasured, as an admin would.
adopt() {
    CRMVAULT_CONFIG_DIR=$run/$1 "$crmvault" snapshots --repo "$2" \
        --fingerprint "$("$crmvault" fingerprint --repo "$2")" >/dev/null
}
for config in config config-nokey; do adopt "$config" "$run/repo"; done
adopt config "$run/one"
admin=$cache/admin.key
results=$run/results.tsv
: >"$results"
: >"$run/failures"

# measure NAME COMMAND...: wall seconds and peak RSS (largest process) of COMMAND, after sync
# and a CHECKPOINT (as bench/run.sh). A command that fails, or runs past BENCH_TIMEOUT seconds
# (default 600), is named in $run/failures and the table, and the run goes on.
measure() {
    local name=$1 code=0
    shift
    sync
    sql postgres "CHECKPOINT"
    /usr/bin/time -f "%e %M" -o "$run/time.$name" timeout -s KILL "${BENCH_TIMEOUT:-600}" "$@" || code=$?
    read -r seconds rss < <(tail -n 1 "$run/time.$name")
    if [ "$code" != 0 ]; then
        echo "$name: exit $code after $seconds s$([ "$code" = 137 ] && echo " (killed at the timeout)")" >>"$run/failures"
        echo "  $name FAILED: exit $code after $seconds s" >&2
        return 0
    fi
    printf '%s\t%s\t%s\n' "$name" "$seconds" "$rss" >>"$results"
    printf '  %-32s %8.2f s  %8d KiB peak\n' "$name" "$seconds" "$rss" >&2
}
seconds_of() { awk -F'\t' -v n="$1" '$1 == n { print $2 }' "$results"; }
rss_of() { awk -F'\t' -v n="$1" '$1 == n { print $3 }' "$results"; }
# median NAME: the median round of NAME.1, NAME.2, … recorded as NAME (seconds and RSS each).
median() {
    local s r n
    n=$(grep -cE "^$1\.[0-9]+	" "$results" || true)
    s=$(grep -E "^$1\.[0-9]+	" "$results" | cut -f2 | sort -g | awk -v n="$n" 'NR == int((n + 1) / 2)' || true)
    r=$(grep -E "^$1\.[0-9]+	" "$results" | cut -f3 | sort -g | awk -v n="$n" 'NR == int((n + 1) / 2)' || true)
    printf '%s\t%s\t%s\n' "$1" "$s" "$r" >>"$results"
}
each_round() { # each_round NAME BASE: NAME/BASE seconds in every round
    local round list=""
    for round in $(seq 1 "$rounds"); do
        list="$list $(ratio "$(seconds_of "$1.$round")" "$(seconds_of "$2.$round")")"
    done
    echo "${list# }"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f MiB", a / 1048576 }'; }

echo "== snapshots ($(grep -c . "$cache/nights.tsv" | awk '{ print $1 - 1 }') nights)" >&2
CRMVAULT_CONFIG_DIR=$run/config-nokey measure snapshots_nokey "$crmvault" snapshots --repo "$run/repo" >"$run/snapshots.nokey"
CRMVAULT_CONFIG_DIR=$run/config measure snapshots_writer "$crmvault" snapshots --repo "$run/repo" >"$run/snapshots.writer"
CRMVAULT_CONFIG_DIR=$run/config measure snapshots_identity "$crmvault" snapshots --repo "$run/repo" --identity "$admin" >"$run/snapshots.identity"
snapshot_count=$(($(wc -l <"$run/snapshots.nokey") - 1))
RESTIC_REPOSITORY=$run/restic measure restic_snapshots restic snapshots -q >/dev/null

echo "== an unchanged backup at $snapshot_count snapshots and at 1" >&2
export CRMVAULT_CONFIG_DIR=$run/config
for round in $(seq 1 "$rounds"); do
    time=$(date -u -d "2027-01-01 01:00:00 UTC + $((round - 1)) hours" +%Y-%m-%dT%H:%M:%SZ)
    measure "unchanged_many.$round" "$crmvault" backup --quiet --json --db "$server/$db" --repo "$run/repo" --time "$time" >"$run/unchanged_many.$round.json"
    measure "unchanged_one.$round" "$crmvault" backup --quiet --json --db "$server/$db" --repo "$run/one" --time "$time" >"$run/unchanged_one.$round.json"
done
median unchanged_many
median unchanged_one

# The admin's housekeeping with nothing forgotten: `prune --identity` merges the nights' small
# packs in the newest snapshot's order (docs/OPERATIONS.md, *A year of nights*), on a copy.
echo "== prune --identity at $snapshot_count snapshots, nothing forgotten" >&2
# The repository as the unchanged backups above left it: their snapshots raised the pin's mark,
# and a copy without them would restore with a warning that they were deleted.
cp -a "$run/repo" "$run/repacked"
adopt config "$run/repacked"
repacked_before=$(du -sb "$run/repacked" | cut -f1)
measure prune_identity_all "$crmvault" prune --repo "$run/repacked" --identity "$cache/admin.key" >"$run/prune_identity_all.out"
repacked_after=$(du -sb "$run/repacked" | cut -f1)

echo "== restore latest from $snapshot_count snapshots (as they are, and after that prune) and from 1" >&2
restore_once() {
    local name=$1
    shift
    sql postgres "DROP DATABASE IF EXISTS $restored WITH (FORCE)"
    sql postgres "CREATE DATABASE $restored"
    measure "$name" "$@"
}
# An admin machine that restored or drilled before remembers the snapshots' labels
# (repos/<id>/labels.json) and resolves `latest` without reading them: warmed here, unmeasured,
# so that every round is such a machine's (the first restore on a new machine reads them all).
for repo in repo one repacked; do
    "$crmvault" ls --repo "$run/$repo" --identity "$admin" latest >/dev/null
done
for round in $(seq 1 "$rounds"); do
    for parallel in "" --parallel; do
        for repo in repo one repacked; do
            restore_once "restore${parallel:+_parallel}_$repo.$round" "$crmvault" restore --quiet $parallel --repo "$run/$repo" \
                --identity "$admin" --db "$server/$restored" latest
        done
    done
done
sql postgres "DROP DATABASE $restored WITH (FORCE)"
for name in restore_repo restore_one restore_repacked restore_parallel_repo restore_parallel_one restore_parallel_repacked; do
    median "$name"
done

echo "== verify (no key)" >&2
CRMVAULT_CONFIG_DIR=$run/config-nokey measure verify_nokey "$crmvault" verify --quiet --repo "$run/repo"
unset CRMVAULT_CONFIG_DIR

echo "== forget ${policy[*]}, then prune" >&2
cp -a "$cache/repo" "$run/forget"
adopt config-forget "$run/forget"
forget_before=$(du -sb "$run/forget" | cut -f1)
export CRMVAULT_CONFIG_DIR=$run/config-forget
measure forget "$crmvault" forget --repo "$run/forget" "${policy[@]}" >"$run/forget.out"
forgotten_size=$(du -sb "$run/forget" | cut -f1)
if [ "$have_prune" = yes ]; then
    measure prune "$crmvault" prune --repo "$run/forget" >"$run/prune.out"
else
    echo "  crmvault prune is not there yet: skipped" >&2
fi
pruned_size=$(du -sb "$run/forget" | cut -f1)
# The admin's prune: packs mostly unused repacked (only an identity can read them).
measure prune_identity "$crmvault" prune --repo "$run/forget" --identity "$admin" >"$run/prune_identity.out"
forget_after=$(du -sb "$run/forget" | cut -f1)
kept_count=$("$crmvault" snapshots --repo "$run/forget" | tail -n +2 | grep -c .)
measure verify_after_prune "$crmvault" verify --quiet --repo "$run/forget" --identity "$admin"
unset CRMVAULT_CONFIG_DIR
kept_size=$(du -sb "$run/kept" | cut -f1)

echo "== restic forget ${policy[*]} --prune" >&2
restic_before=$(du -sb "$run/restic" | cut -f1)
RESTIC_REPOSITORY=$run/restic measure restic_forget_prune restic forget -q --prune "${policy[@]}"
restic_after=$(du -sb "$run/restic" | cut -f1)
restic_kept=$(RESTIC_REPOSITORY=$run/restic restic snapshots -q --json | grep -o '"short_id"' | wc -l)

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
ms() { awk -v a="$(seconds_of "$1")" 'BEGIN { if (a == "") print "none finished"; else printf "%.2f s", a }'; }
peak() { awk -v a="$(rss_of "$1")" 'BEGIN { if (a == "") print "-"; else printf "%d MiB", a / 1024 }'; }
row() { printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5"; }
build_seconds=$(cat "$cache/build_seconds")
{
    echo "Scale $scale, $nights nights: table data $(mib "$(cat "$cache/table_bytes.first")") on night 0, $(mib "$(cat "$cache/table_bytes.last")") after the last;"
    echo "the cache took $build_seconds s to build ($(awk -F'\t' 'NR > 1 { a += $2; b += $3; c += $4 } END { printf "crm_day %.0f s, crmvault backup %.0f s, pg_dump | restic %.0f s", a, b, c }' "$cache/nights.tsv"));"
    echo "repository $(mib "$(size_of "$cache/repo")"), restic's $(mib "$(size_of "$cache/restic")"); $(nproc) cores; PostgreSQL $(sql postgres 'SHOW server_version')."
    echo
    echo "| what | wall | peak memory | against | goal |"
    echo "|---|---|---|---|---|"
    row "snapshots, no key ($snapshot_count snapshots)" "$(ms snapshots_nokey)" "$(peak snapshots_nokey)" "" "< 1 s"
    row "snapshots, writer key" "$(ms snapshots_writer)" "$(peak snapshots_writer)" "" "< 1 s"
    row "snapshots, --identity" "$(ms snapshots_identity)" "$(peak snapshots_identity)" "" "< 1 s"
    row "restic snapshots" "$(ms restic_snapshots)" "$(peak restic_snapshots)" "" ""
    row "**unchanged backup at $snapshot_count snapshots**" "$(ms unchanged_many)" "$(peak unchanged_many)" \
        "**$(ratio "$(seconds_of unchanged_many)" "$(seconds_of unchanged_one)")× time, $(ratio "$(rss_of unchanged_many)" "$(rss_of unchanged_one)")× peak** of 1 snapshot (rounds: $(each_round unchanged_many unchanged_one))" "≤ 1.1×"
    row "unchanged backup at 1 snapshot" "$(ms unchanged_one)" "$(peak unchanged_one)" "" ""
    row "**restore latest at $snapshot_count snapshots**" "$(ms restore_repo)" "$(peak restore_repo)" \
        "**$(ratio "$(seconds_of restore_repo)" "$(seconds_of restore_one)")×** of 1 snapshot (rounds: $(each_round restore_repo restore_one))" "≤ 1.05×"
    row "restore latest at 1 snapshot" "$(ms restore_one)" "$(peak restore_one)" "" ""
    row "**restore latest at $snapshot_count snapshots after prune --identity** (nothing forgotten)" "$(ms restore_repacked)" "$(peak restore_repacked)" \
        "**$(ratio "$(seconds_of restore_repacked)" "$(seconds_of restore_one)")×** of 1 snapshot (rounds: $(each_round restore_repacked restore_one))" "≤ 1.05×"
    row "**restore --parallel latest at $snapshot_count snapshots**" "$(ms restore_parallel_repo)" "$(peak restore_parallel_repo)" \
        "**$(ratio "$(seconds_of restore_parallel_repo)" "$(seconds_of restore_parallel_one)")×** of 1 snapshot (rounds: $(each_round restore_parallel_repo restore_parallel_one))" "≤ 1.05×"
    row "restore --parallel latest at 1 snapshot" "$(ms restore_parallel_one)" "$(peak restore_parallel_one)" "" ""
    row "**restore --parallel latest at $snapshot_count snapshots after prune --identity**" "$(ms restore_parallel_repacked)" "$(peak restore_parallel_repacked)" \
        "**$(ratio "$(seconds_of restore_parallel_repacked)" "$(seconds_of restore_parallel_one)")×** of 1 snapshot (rounds: $(each_round restore_parallel_repacked restore_parallel_one))" "≤ 1.05×"
    row "prune --identity at $snapshot_count snapshots, nothing forgotten" "$(ms prune_identity_all)" "$(peak prune_identity_all)" "$(mib "$repacked_before") → $(mib "$repacked_after")" "peak < 256 MiB"
    row "verify, no key, $snapshot_count snapshots" "$(ms verify_nokey)" "$(peak verify_nokey)" "" "(measured)"
    row "**forget ${policy[*]}**" "$(ms forget)" "$(peak forget)" "$nights → $kept_count snapshots; $(mib $((forget_before - forgotten_size))) freed" "peak < 256 MiB"
    if [ "$have_prune" = yes ]; then
        row "**prune** (the backup host's, writer key)" "$(ms prune)" "$(peak prune)" "$(mib $((forgotten_size - pruned_size))) freed: $(mib "$forgotten_size") → $(mib "$pruned_size")" "peak < 256 MiB"
    else
        row "prune" "not there yet" "" "" ""
    fi
    row "**prune --identity** (the admin's: repacks)" "$(ms prune_identity)" "$(peak prune_identity)" "$(mib $((pruned_size - forget_after))) freed: $(mib "$pruned_size") → $(mib "$forget_after")" "peak < 256 MiB"
    row "**repository after forget + prune + prune --identity**" "" "" "**$(ratio "$forget_after" "$kept_size")×** a repository that only held the $(wc -l <"$cache/kept.nights") kept nights ($(mib "$kept_size"))" "≤ 1.1×"
    row "verify --identity after forget + prune" "$(ms verify_after_prune)" "$(peak verify_after_prune)" "" ""
    housekeeping_seconds=$(awk -v a="$(seconds_of forget)" -v b="$(seconds_of prune)" -v c="$(seconds_of prune_identity)" 'BEGIN { print a + b + c }')
    housekeeping_rss=$(awk -v a="$(rss_of forget)" -v b="$(rss_of prune)" -v c="$(rss_of prune_identity)" 'BEGIN { m = a > b ? a : b; print (m > c ? m : c) }')
    row "**restic forget ${policy[*]} --prune**" "$(ms restic_forget_prune)" "$(peak restic_forget_prune)" \
        "$nights → $restic_kept snapshots; $(mib $((restic_before - restic_after))) freed: $(mib "$restic_before") → $(mib "$restic_after"); crmvault's forget + both prunes took $(ratio "$housekeeping_seconds" "$(seconds_of restic_forget_prune)")× its time at $(ratio "$housekeeping_rss" "$(rss_of restic_forget_prune)")× its peak" ""
    if [ -s "$run/failures" ]; then
        echo
        echo "Failed or killed (not in the medians):"
        sed 's/^/- /' "$run/failures"
    fi
} | tee "$run/results.md"
