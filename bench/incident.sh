#!/usr/bin/env bash
# What an incident costs: the commands that answer for part of a snapshot (dump one table,
# restore one table, diff two nights, one company with its related rows) against a full
# restore of the same snapshot, and pg_restore's answer where it has one (`pg_restore -t`,
# one table from a custom-format dump), in one run. Prints wall time, peak memory and each
# one's share of the full restore as a Markdown table.
#
# usage: bench/incident.sh [SCALE]       SCALE 1 is about 1 GiB of table data (default 0.1)
#   DATABASE_URL  server to use (default postgres://postgres@127.0.0.1:5432); databases
#                 crmvault_incident and crmvault_incident_* are created and replaced there.
#   BENCH_DIR     where the repository and dumps go (default bench-work/incident-SCALE)
# needs: psql, pg_dump, pg_restore, GNU time
set -euo pipefail

scale=${1:-0.1}
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
server=${server%/}
work=${BENCH_DIR:-$PWD/bench-work/incident-$scale}
db=crmvault_incident
export PGOPTIONS="-c client_min_messages=warning"

for tool in psql pg_dump pg_restore /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postgresql-client time)" >&2; exit 1; }
done

cargo build --release --quiet
crmvault=${CARGO_TARGET_DIR:-$PWD/target}/release/crmvault

rm -rf "$work"
mkdir -p "$work"
results=$work/results.tsv
: >"$results"

sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$server/$1" -c "$2"; }

# measure NAME COMMAND...: wall seconds and peak RSS of COMMAND, from a checkpoint.
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
rss_of() { awk -F'\t' -v n="$1" '$1 == n { print $3 }' "$results"; }
fresh() {
    sql postgres "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
    sql postgres "CREATE DATABASE $1"
}

echo "== generating scale $scale into $db" >&2
fresh "$db"
psql -X -q -v ON_ERROR_STOP=1 -d "$server/$db" -f bench/crm_schema.sql >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -v scale="$scale" -d "$server/$db" -f bench/crm_generate.sql >/dev/null

echo "== two nights" >&2
export CRMVAULT_CONFIG_DIR=$work/crmvault-config
recipient=$("$crmvault" keygen -o "$work/admin.key" 2>/dev/null)
"$crmvault" init --repo "$work/repo" --recipient "$recipient" >/dev/null
id_of() { sed -n 's/.*"snapshot_id": *"\([0-9a-f]*\)".*/\1/p' "$1"; }
"$crmvault" backup --json --db "$server/$db" --repo "$work/repo" >"$work/night1.json"
pg_dump -Fc -d "$server/$db" -f "$work/night1.dump"
psql -X -q -1 -v ON_ERROR_STOP=1 -d "$server/$db" -v day=1 -f bench/crm_day.sql >/dev/null
"$crmvault" backup --json --db "$server/$db" --repo "$work/repo" >"$work/night2.json"
night1=$(id_of "$work/night1.json")
night2=$(id_of "$work/night2.json")
admin=(--repo "$work/repo" --identity "$work/admin.key")
small=crm.users
company=$(sql "$db" "SELECT company_id FROM crm.deals GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")

echo "== measuring" >&2
fresh crmvault_incident_full
measure full_restore "$crmvault" restore "${admin[@]}" --parallel --jobs 2 --db "$server/crmvault_incident_full" "$night1"
# The 3 a.m. default: a database restore --create makes, against pg_restore -j2 of the same
# night into a new database.
sql postgres "DROP DATABASE IF EXISTS crmvault_incident_create WITH (FORCE)"
measure restore_create "$crmvault" restore "${admin[@]}" --create --jobs 2 --db "$server/crmvault_incident_create" "$night1"
fresh crmvault_incident_pg_restore_j2
measure pg_restore_j2 pg_restore -j2 -d "$server/crmvault_incident_pg_restore_j2" "$work/night1.dump"
fresh crmvault_incident_pg_restore
# pg_restore -t makes the table, not its schema.
sql crmvault_incident_pg_restore "CREATE SCHEMA crm"
measure pg_restore_table pg_restore -d "$server/crmvault_incident_pg_restore" -n crm -t users "$work/night1.dump"
measure dump_table bash -c "'$crmvault' dump ${admin[*]} --table $small --format csv $night1 >/dev/null"
fresh crmvault_incident_table
measure restore_table "$crmvault" restore "${admin[@]}" --db "$server/crmvault_incident_table" --table "$small" "$night1"
measure diff_day bash -c "'$crmvault' diff ${admin[*]} --json $night1 $night2 >$work/diff.json"
fresh crmvault_incident_rows
measure rows_related "$crmvault" restore "${admin[@]}" --db "$server/crmvault_incident_rows" \
    --rows "crm.companies:id=$company" --with-related "$night1"

full=$(seconds_of full_restore)
share() { awk -v a="$(seconds_of "$1")" -v b="$full" 'BEGIN { printf "%.3f", a / b }'; }
{
    echo
    echo "scale $scale, $(date -u +%Y-%m-%d), company $company; restore --create / pg_restore -j2: $(awk -v a="$(seconds_of restore_create)" -v b="$(seconds_of pg_restore_j2)" 'BEGIN { printf "%.2f", a / b }')"
    echo
    echo "| command | seconds | peak RSS (MiB) | of a full restore |"
    echo "|---|---:|---:|---:|"
    for name in full_restore restore_create pg_restore_j2 pg_restore_table dump_table restore_table diff_day rows_related; do
        printf '| %s | %s | %d | %s |\n' "$name" "$(seconds_of $name)" "$(($(rss_of $name) / 1024))" "$(share $name)"
    done
} | tee "$work/table.md"
