#!/usr/bin/env bash
# crmvault benchmark, side by side with what an admin would use instead, in one run:
#   the COPY floor, pg_dump -Fc, pg_dump -Fp | zstd -3 | age, restic fed by pg_dump -Fp, and
#   crmvault (full, unchanged, after a CRM day, after uniform churn), then restore (in one
#   transaction, and --parallel) against pg_restore -j2. Prints wall time, bytes, peak memory
#   and ratios as a Markdown table.
#
# usage: bench/run.sh [SCALE]            SCALE 1 is about 1 GiB of table data (default 0.1)
#   DATABASE_URL  server to use (default postgres://postgres@127.0.0.1:5432); databases
#                 crmvault_bench and crmvault_bench_restored are created and replaced there.
#   BENCH_DIR     where repositories and dumps go (default bench-work/scale-SCALE)
#   BENCH_RESTORE_ROUNDS  how many times the three restores take turns (default 1); the table
#                 shows the median round of each, and the ratio of every round
#   BENCH_BACKUP_ROUNDS   how many times the COPY floor and crmvault's full backup (into a new
#                 repository) take turns (default 1); medians and every round's ratio, likewise
# needs: psql, pg_dump, pg_restore, zstd, age, GNU time; restic is used when installed
#   (Debian: apt-get install zstd age restic time)
set -euo pipefail
cd "$(dirname "$0")/.."

scale=${1:-0.1}
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
server=${server%/}
work=${BENCH_DIR:-$PWD/bench-work/scale-$scale}
restore_rounds=${BENCH_RESTORE_ROUNDS:-1}
backup_rounds=${BENCH_BACKUP_ROUNDS:-1}
db=crmvault_bench
restored=crmvault_bench_restored
export PGOPTIONS="-c client_min_messages=warning"

for tool in psql pg_dump pg_restore zstd age /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postgresql-client zstd age time)" >&2; exit 1; }
done
have_restic=$(command -v restic >/dev/null && echo yes || echo no)

cargo build --release --quiet
crmvault=${CARGO_TARGET_DIR:-$PWD/target}/release/crmvault

rm -rf "$work"
mkdir -p "$work"
results=$work/results.tsv
: >"$results"

sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$server/$1" -c "$2"; }

# measure NAME COMMAND...: wall seconds and peak RSS (largest process) of COMMAND. Each starts
# with nothing left to write back: dirty pages of what ran before (a dump, a repository just
# removed, the generated tables) otherwise reach the disk during the next command, and slow
# whichever one waits for the disk (a backup syncs every pack it writes; the floor waits for
# nothing).
measure() {
    local name=$1
    shift
    sync
    sql postgres "CHECKPOINT"
    /usr/bin/time -f "%e %M" -o "$work/time.$name" "$@"
    read -r seconds rss <"$work/time.$name"
    printf '%s\t%s\t%s\n' "$name" "$seconds" "$rss" >>"$results"
    printf '  %-28s %8.2f s  %8d KiB peak\n' "$name" "$seconds" "$rss" >&2
}
seconds_of() { awk -F'\t' -v n="$1" '$1 == n { print $2 }' "$results"; }
# median NAME ROUNDS: the median round of NAME.1, NAME.2, … recorded as NAME.
median() {
    grep -E "^$1\.[0-9]+	" "$results" | sort -t "$(printf '\t')" -k2,2g |
        awk -v n="$2" 'NR == int((n + 1) / 2)' | sed -E "s/^$1\.[0-9]+/$1/" >>"$results"
}
rss_of() { awk -F'\t' -v n="$1" '$1 == n { print $3 }' "$results"; }
# Bytes of the files under $1 (or of the file $1): what a tool stored. `du -sb` also counted
# the 4 KiB of every directory, which object storage does not have and a single dump file
# does not need (a scale-1 repository's 53 folders: 0.08% of its full backup).
size_of() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

echo "== generating scale $scale into $db" >&2
sql postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)"
sql postgres "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -d "$server/$db" -f bench/crm_schema.sql >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -v scale="$scale" -d "$server/$db" -f bench/crm_generate.sql >/dev/null
table_bytes=$(sql "$db" "SELECT sum(pg_table_size(oid)) FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r'")
echo "  table data: $table_bytes bytes" >&2

# The floor: every table COPY'd to /dev/null in one transaction, on one connection.
{
    echo "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;"
    sql "$db" "SELECT format('COPY %I.%I TO STDOUT;', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'crm' AND c.relkind = 'r' ORDER BY 1"
    echo "COMMIT;"
} >"$work/floor.sql"
psql -X -q -d "$server/$db" -f "$work/floor.sql" >/dev/null # warm the cache
measure copy_floor.1 psql -X -q -d "$server/$db" -f "$work/floor.sql" -o /dev/null

echo "== peers" >&2
measure pg_dump_fc pg_dump -Fc -f "$work/dump.fc" -d "$server/$db"
age-keygen -o "$work/age.key" 2>/dev/null
recipient=$(age-keygen -y "$work/age.key")
measure pg_dump_zstd_age bash -c "pg_dump -Fp -d '$server/$db' | zstd -3 -q | age -r $recipient > '$work/dump.sql.zst.age'"
measure pg_dump_zstd bash -c "pg_dump -Fp -d '$server/$db' | zstd -3 -q > '$work/dump.sql.zst'"
if [ "$have_restic" = yes ]; then
    export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic
    restic init -q
    measure restic_full bash -c "pg_dump -Fp -d '$server/$db' | restic backup -q --stdin --stdin-filename crm.sql"
    restic_full=$(size_of "$work/restic")
fi

echo "== crmvault" >&2
export CRMVAULT_CONFIG_DIR=$work/crmvault-config
crmvault_recipient=$("$crmvault" keygen -o "$work/admin.key" 2>/dev/null)
# shellcheck disable=SC2086 # CRMVAULT_INIT_ARGS is a list of options, e.g. "--chunk-size 16384"
"$crmvault" init --repo "$work/repo" --recipient "$crmvault_recipient" ${CRMVAULT_INIT_ARGS:-} >/dev/null
repo_size() { size_of "$work/repo"; }
before=$(repo_size)
# With BENCH_BACKUP_ROUNDS=N the floor and the full backup take turns N times (the floor's
# first round ran above), each full backup into a new repository; the last one is kept.
for round in $(seq 1 "$backup_rounds"); do
    if [ "$round" -gt 1 ]; then
        measure "copy_floor.$round" psql -X -q -d "$server/$db" -f "$work/floor.sql" -o /dev/null
        rm -rf "$work/repo"
        # shellcheck disable=SC2086
        "$crmvault" init --repo "$work/repo" --recipient "$crmvault_recipient" ${CRMVAULT_INIT_ARGS:-} >/dev/null
        before=$(repo_size)
    fi
    measure "crmvault_full.$round" "$crmvault" backup --json --db "$server/$db" --repo "$work/repo" >"$work/full.json"
done
crmvault_full=$(( $(repo_size) - before ))
median copy_floor "$backup_rounds"
median crmvault_full "$backup_rounds"
before=$(repo_size)
measure crmvault_unchanged "$crmvault" backup --json --db "$server/$db" --repo "$work/repo" >"$work/unchanged.json"
crmvault_unchanged=$(( $(repo_size) - before ))

echo "== restore" >&2
full_id=$(sed -n 's/.*"snapshot_id": *"\([0-9a-f]*\)".*/\1/p' "$work/full.json")
# restore_once NAME COMMAND...: COMMAND into a new empty database, measured. Each restore
# writes about as much WAL as it loads: start each from a fresh checkpoint so that none pays
# for the one before it.
restore_once() {
    local name=$1
    shift
    sql postgres "DROP DATABASE IF EXISTS $restored WITH (FORCE)"
    sql postgres "CREATE DATABASE $restored"
    sql postgres "CHECKPOINT"
    measure "$name" "$@"
}
# The three restores take turns, BENCH_RESTORE_ROUNDS times; the table shows each one's median
# round (a restore's time varies more from run to run than the 10% the goal asks for).
for round in $(seq 1 "$restore_rounds"); do
    restore_once "pg_restore_j2.$round" pg_restore -j2 -d "$server/$restored" "$work/dump.fc"
    restore_once "crmvault_restore.$round" "$crmvault" restore --repo "$work/repo" --identity "$work/admin.key" --db "$server/$restored" "$full_id"
    restore_once "crmvault_restore_parallel.$round" "$crmvault" restore --parallel --repo "$work/repo" --identity "$work/admin.key" --db "$server/$restored" "$full_id"
done
sql postgres "DROP DATABASE $restored WITH (FORCE)"
median pg_restore_j2 "$restore_rounds"
median crmvault_restore "$restore_rounds"
median crmvault_restore_parallel "$restore_rounds"

# after NAME SCRIPT: apply a change script, then back up with restic and crmvault; sets
# restic_NAME and crmvault_NAME to the bytes each added.
after() {
    local name=$1 script=$2 before
    echo "== $name ($script)" >&2
    psql -X -q -v ON_ERROR_STOP=1 -d "$server/$db" -f "$script" >/dev/null
    if [ "$have_restic" = yes ]; then
        before=$(size_of "$work/restic")
        measure "restic_$name" bash -c "pg_dump -Fp -d '$server/$db' | restic backup -q --stdin --stdin-filename crm.sql"
        printf -v "restic_$name" '%s' $(( $(size_of "$work/restic") - before ))
    fi
    before=$(repo_size)
    measure "crmvault_$name" "$crmvault" backup --json --db "$server/$db" --repo "$work/repo" >"$work/$name.json"
    printf -v "crmvault_$name" '%s' $(( $(repo_size) - before ))
}
after day bench/crm_day.sql
after churn bench/uniform_churn.sql

# Report.
floor=$(seconds_of copy_floor)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
percent() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f MiB", a / 1048576 }'; }
# rounds_note NAME [BASE ROUNDS]: with several rounds, NAME's ratio to BASE in each
# (default: the restores against pg_restore -j2).
rounds_note() {
    local base=${2:-pg_restore_j2} rounds=${3:-$restore_rounds} list="" round
    [ "$rounds" -gt 1 ] || return 0
    for round in $(seq 1 "$rounds"); do
        list="$list $(ratio "$(seconds_of "$1.$round")" "$(seconds_of "$base.$round")")"
    done
    printf ' (median of %s rounds; each round:%s)' "$rounds" "$list"
}
row() { printf '| %s | %s s | %s | %s | %s MiB | %s |\n' "$1" "$(seconds_of "$2")" "$3" "$4" "$(( $(rss_of "$2") / 1024 ))" "$5"; }
zstd_size=$(size_of "$work/dump.sql.zst")
{
    echo "Scale $scale: $(mib "$table_bytes") of table data; $(nproc) cores; PostgreSQL $(sql postgres 'SHOW server_version')."
    echo
    echo "| what | wall | ratio to COPY floor | bytes stored or added | peak memory | note |"
    echo "|---|---|---|---|---|---|"
    row "COPY floor (all tables, one transaction)" copy_floor 1.00 - "physical floor"
    row "pg_dump -Fc" pg_dump_fc "$(ratio "$(seconds_of pg_dump_fc)" "$floor")" "$(mib "$(size_of "$work/dump.fc")")" ""
    row "pg_dump -Fp \| zstd -3 \| age" pg_dump_zstd_age "$(ratio "$(seconds_of pg_dump_zstd_age)" "$floor")" "$(mib "$(size_of "$work/dump.sql.zst.age")")" ""
    if [ "$have_restic" = yes ]; then
        row "restic (pg_dump -Fp), full" restic_full "$(ratio "$(seconds_of restic_full)" "$floor")" "$(mib "$restic_full")" ""
    fi
    row "**crmvault backup, full**" crmvault_full "**$(ratio "$(seconds_of crmvault_full)" "$floor")**" "$(mib "$crmvault_full")" "size $(ratio "$crmvault_full" "$zstd_size")× pg_dump\|zstd -3$(rounds_note crmvault_full copy_floor "$backup_rounds")"
    row "crmvault backup, unchanged" crmvault_unchanged "$(ratio "$(seconds_of crmvault_unchanged)" "$floor")" "$(mib "$crmvault_unchanged")" "$(percent "$crmvault_unchanged" "$crmvault_full") of full"
    if [ "$have_restic" = yes ]; then
        row "restic after a CRM day" restic_day "$(ratio "$(seconds_of restic_day)" "$floor")" "$(mib "$restic_day")" "$(percent "$restic_day" "$restic_full") of its full"
    fi
    row "**crmvault after a CRM day**" crmvault_day "$(ratio "$(seconds_of crmvault_day)" "$floor")" "$(mib "$crmvault_day")" "**$(percent "$crmvault_day" "$crmvault_full") of full**"
    if [ "$have_restic" = yes ]; then
        row "restic after 1% uniform churn" restic_churn "$(ratio "$(seconds_of restic_churn)" "$floor")" "$(mib "$restic_churn")" "$(percent "$restic_churn" "$restic_full") of its full"
    fi
    row "**crmvault after 1% uniform churn**" crmvault_churn "$(ratio "$(seconds_of crmvault_churn)" "$floor")" "$(mib "$crmvault_churn")" "**$(percent "$crmvault_churn" "$crmvault_full") of full**"
    row "pg_restore -j2 (from -Fc)" pg_restore_j2 "$(ratio "$(seconds_of pg_restore_j2)" "$floor")" - ""
    row "crmvault restore (one transaction)" crmvault_restore "$(ratio "$(seconds_of crmvault_restore)" "$floor")" - "$(ratio "$(seconds_of crmvault_restore)" "$(seconds_of pg_restore_j2)")× pg_restore -j2$(rounds_note crmvault_restore)"
    row "**crmvault restore --parallel**" crmvault_restore_parallel "$(ratio "$(seconds_of crmvault_restore_parallel)" "$floor")" - "**$(ratio "$(seconds_of crmvault_restore_parallel)" "$(seconds_of pg_restore_j2)")× pg_restore -j2**$(rounds_note crmvault_restore_parallel)"
} | tee "$work/results.md"
