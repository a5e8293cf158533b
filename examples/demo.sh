#!/usr/bin/env bash
# crmvault demo: back up the example CRM database to a local folder, verify it, restore it into
# a second database and prove the two are the same.
#
#   DATABASE_URL   a PostgreSQL server to use (default postgres://postgres@127.0.0.1:5432/postgres);
#                  the demo creates and replaces databases crmvault_demo and crmvault_demo_restored there.
#   DEMO_DIR       where the repository and keys go (default: a new temporary folder).
set -euo pipefail

cd "$(dirname "$0")/.."
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PGOPTIONS="-c client_min_messages=warning"
server=${DATABASE_URL%/*}
shown=$(printf '%s' "$server" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#')

if ! command -v psql >/dev/null; then
    echo "demo: psql is not installed (apt-get install postgresql-client)" >&2
    exit 1
fi
if ! psql -X -q -At -d "$DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then
    echo "demo: no PostgreSQL server answers at $shown; start one or set DATABASE_URL=postgres://user@host:port/db" >&2
    exit 1
fi

profile=${CRMVAULT_BUILD_PROFILE:-release}
if [ -n "${CRMVAULT_BIN:-}" ]; then
    # A binary built already (CI gives the one its tests ran): no build.
    echo "== using $CRMVAULT_BIN"
    crmvault=$CRMVAULT_BIN
else
    if [ -t 2 ]; then
        echo "== building crmvault ($profile; the first build takes several minutes)"
        cargo build --profile "$profile"
    else
        echo "== building crmvault ($profile; the first build takes several minutes, quietly)"
        cargo build --profile "$profile" --quiet
    fi
    # Where cargo put it: CARGO_TARGET_DIR, a build.target-dir setting, or ./target.
    target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    crmvault=$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")/crmvault
fi
if [ ! -x "$crmvault" ]; then
    echo "demo: no crmvault binary at $crmvault" >&2
    exit 1
fi

work=${DEMO_DIR:-$(mktemp -d -t crmvault-demo.XXXXXX)}
mkdir -p "$work"
export CRMVAULT_CONFIG_DIR=$work/config   # the backup host's writer key lives here
repo=$work/repo
source_db=crmvault_demo
restored_db=crmvault_demo_restored

sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

echo "== loading the example CRM database into $source_db"
sql "$DATABASE_URL" "DROP DATABASE IF EXISTS $source_db WITH (FORCE)"
sql "$DATABASE_URL" "DROP DATABASE IF EXISTS $restored_db WITH (FORCE)"
sql "$DATABASE_URL" "CREATE DATABASE $source_db"
sql "$DATABASE_URL" "CREATE DATABASE $restored_db"
psql -X -q -v ON_ERROR_STOP=1 -d "$server/$source_db" -f examples/crm.sql >/dev/null

echo "== crmvault keygen: the admin's key (keep it offline; the backup host never needs it)"
rm -f "$work/admin.key"
recipient=$("$crmvault" keygen -o "$work/admin.key")
echo "admin recipient (public key): $recipient"

echo "== crmvault init"
"$crmvault" init --repo "$repo" --recipient "$recipient"

echo "== crmvault backup (night 1)"
"$crmvault" backup --db "$server/$source_db" --repo "$repo"

echo "== a day of CRM work, then crmvault backup (night 2): only the changes are stored"
sql "$server/$source_db" "UPDATE crm.contacts SET phone = '+44 20 7946 0000' WHERE id % 50 = 0;
                          INSERT INTO crm.audit_log (user_id, table_name, row_id, action, changes)
                          SELECT 1, 'contacts', id, 'update', '{\"phone\": \"+44 20 7946 0000\"}' FROM crm.contacts WHERE id % 50 = 0"
"$crmvault" backup --db "$server/$source_db" --repo "$repo"

echo "== crmvault snapshots"
"$crmvault" snapshots --repo "$repo"

echo "== crmvault verify (no key needed)"
"$crmvault" verify --repo "$repo"

echo "== crmvault verify --read-data (admin key: decrypt and re-hash every chunk)"
"$crmvault" verify --repo "$repo" --identity "$work/admin.key" --read-data

echo "== crmvault restore latest into $restored_db"
"$crmvault" restore --repo "$repo" --identity "$work/admin.key" --db "$server/$restored_db" latest

echo "== comparing every table of $source_db and $restored_db"
fingerprint() {
    sql "$server/$1" "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
                      ORDER BY 1" |
    while read -r table; do
        printf '%s %s\n' "$table" "$(sql "$server/$1" "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM $table t")"
    done
}
if diff <(fingerprint $source_db) <(fingerprint $restored_db); then
    echo "demo OK: $(fingerprint $restored_db | wc -l) tables restored identical to the source; repository and keys in $work"
    echo "the databases $source_db and $restored_db stay on $shown for you to look at; remove them with:"
    echo "  psql -d \"\${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}\" -c 'DROP DATABASE $source_db' -c 'DROP DATABASE $restored_db'"
else
    echo "demo FAILED: the restored database differs from the source" >&2
    exit 1
fi
