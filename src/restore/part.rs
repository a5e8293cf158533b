//! Restoring part of a snapshot: some tables (`--table`, `--exclude-table`), into other
//! schemas (`--schema-map`, beside the live data), or rows only into existing tables
//! (`--data-only`). Decides what the target may hold, which schema entries run
//! ([`postgres::part`]), and narrows the manifest to what is loaded, under the names it is
//! loaded as. Everything then loads as a whole restore does: one transaction by default, all
//! or nothing.

use crate::error::{Error, Result};
use crate::postgres::part::{self as schema_part, Spec, renamed};
use crate::postgres::script::TableName;
use crate::postgres::{self, LoadSession};
use crate::repo::{Manifest, TableManifest};
use crate::table_filter::TableFilter;

use super::{ExistingContents, PartOptions, RestoreOptions, RowsWritten};

/// Narrows `manifest` to the part `options.part` asks for, renamed, and returns the pre- and
/// post-data scripts to run. `contents` is what the target holds (`None`: empty).
pub(super) async fn choose(
    client: &LoadSession,
    options: &RestoreOptions,
    manifest: &mut Manifest,
    (pre_data, post_data): (&str, &str),
    (contents, only): (Option<String>, Option<&std::collections::BTreeSet<TableName>>),
    warnings: &mut Vec<String>,
) -> Result<(String, String)> {
    let part = &options.part;
    let database = options.database.to_string();
    if options.existing == ExistingContents::Replace {
        return Err(Error::Invalid(
            "--clean drops everything the target holds: with --table, --schema-map or --data-only it would drop \
             the live data; leave --clean out"
                .into(),
        ));
    }
    if options.parallel && contents.is_some() {
        return Err(Error::Invalid(format!(
            "{database} is not empty: beside live data a restore is one transaction; leave --parallel out"
        )));
    }
    let filter = TableFilter::new(&part.include, &part.exclude)?;
    let map = &part.schema_map;
    let mut note = |warning: String| {
        tracing::warn!("{warning}");
        warnings.push(warning);
    };
    if manifest.large_objects.take().is_some() {
        note("large objects are restored only with the whole snapshot: left out".into());
    }

    let superuser = client.is_superuser().await?;
    if contents.is_some() && superuser {
        note(
            "restoring beside live data as a superuser: the snapshot's functions that run while rows load and \
             indexes are built (check constraints, domain checks, defaults, index expressions, and with --data-only \
             the live tables' triggers) run with every right on this server; a source user who can create \
             functions, or whoever controls the backup host, can act as you, and the check before commit is a \
             tripwire, not a boundary. Restore connected as a login without superuser (--db postgres://ROLE@…) \
             where you can"
                .into(),
        );
    }
    if part.data_only {
        let Some(_) = contents else {
            return Err(Error::Invalid(format!(
                "{database} is empty: --data-only loads rows into existing tables (restore the schema too by \
                 leaving --data-only out)"
            )));
        };
        manifest.tables.retain(|t| filter.matches(&t.schema, &t.name));
        let names: Vec<String> = manifest.tables.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
        check_patterns(&filter, &names)?;
        check_map(map, manifest.tables.iter().map(|t| t.schema.as_str()))?;
        refuse_unmapped_data_only(map, manifest.tables.iter())?;
        rename_tables(manifest, map);
        let wanted: Vec<(&str, &str, &[String])> =
            manifest.tables.iter().map(|t| (t.schema.as_str(), t.name.as_str(), t.columns.as_slice())).collect();
        let missing = client.missing_tables(&wanted).await?;
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "--data-only loads into existing tables, and in {database}: {}",
                missing.join("; ")
            )));
        }
        manifest.sequences.clear();
        manifest.materialized_views.clear();
        let pairs = client.foreign_key_pairs().await?;
        parents_first(&mut manifest.tables, |t| (t.schema.as_str(), t.name.as_str()), &pairs);
        return Ok((String::new(), String::new()));
    }

    let beside_live_data = contents.is_some();
    if let Some(contents) = &contents
        && map.is_empty()
    {
        return Err(Error::Invalid(format!(
            "{database} is not empty ({contents}): restore some tables into it with --schema-map crm=crm_restored \
             (a schema of their own beside the live one) or --data-only (rows into its existing tables)"
        )));
    }
    let targets: Vec<&str> = map.iter().map(|(_, to)| to.as_str()).collect();
    let taken = client.existing_schemas(&targets).await?;
    if !taken.is_empty() {
        return Err(Error::Invalid(format!(
            "{database} has a schema {} already: --schema-map restores into a new schema; name another",
            taken.join(", ")
        )));
    }
    // `--rows`: the tables the rows are in.
    let wanted = |t: &TableName| only.map_or_else(|| filter.matches(&t.schema, &t.name), |only| only.contains(t));
    // Beside live data the side objects are the admin's: owned by the restoring role, with
    // none of the snapshot's grants (a role whose access was revoked since, or a source user
    // who owned them, must not reach the copy the admin compares and copies back from). What
    // is left of owners and grants after that (one the script does not end) is refused.
    let leave_out = postgres::script::LeaveOut { owners: true, privileges: true };
    let (pre_data, post_data) = if beside_live_data {
        note("beside live data, the restored objects belong to you and carry none of the snapshot's grants".into());
        (postgres::script::without(pre_data, leave_out), postgres::script::without(post_data, leave_out))
    } else {
        (pre_data.to_string(), post_data.to_string())
    };
    let (live_schemas, live_inert) =
        if beside_live_data { (client.schemas().await?, client.live_inert().await?) } else { Default::default() };
    let spec = Spec {
        wanted: &wanted,
        schema_map: map,
        beside_live_data,
        live_schemas: &live_schemas,
        live_inert: &live_inert,
    };
    let selected = schema_part::select(&pre_data, &post_data, &spec);
    let names: Vec<String> = selected.candidates.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
    check_patterns(&filter, &names)?;
    if beside_live_data {
        let unmapped: Vec<String> = selected
            .relations
            .iter()
            .filter(|t| renamed(map, &t.schema).is_none())
            .map(|t| format!("{}.{}", t.schema, t.name))
            .collect();
        if !unmapped.is_empty() {
            return Err(Error::Invalid(format!(
                "{} would be restored over the live one{}: their schema is not renamed; add --schema-map for it, \
                 or choose tables with --table",
                unmapped.join(", "),
                if unmapped.len() > 1 { "s" } else { "" }
            )));
        }
    }
    if !selected.unmade.is_empty() {
        return Err(Error::Invalid(format!(
            "cannot be made beside live data: {}; a side-schema restore names no live object but types that run no \
             code (an extension's, enums, plain domains): it would run or change what a live role wrote. Restore the table into an \
             empty database instead (--table … --db postgres://…/scratch), and compare from there",
            selected.unmade.join("; ")
        )));
    }
    check_map(map, selected.relations.iter().map(|t| t.schema.as_str()))?;
    if beside_live_data && superuser && !options.trust_snapshot_code && !selected.runs_own_code.is_empty() {
        let named: Vec<String> = selected.runs_own_code.iter().map(|name| crate::error::printable(name)).collect();
        return Err(Error::Invalid(format!(
            "the snapshot's own code could run while this restore loads beside live data, with a superuser's \
             rights: {} (the routines, operators and operator classes it makes, but trigger functions, and \
             triggers it would make before the rows load); whoever could create functions in the source database, \
             or controls the backup host, could act as you. Connect as a login without superuser that may create \
             the side schema (--db postgres://ROLE@…), or give --trust-snapshot-code",
            named.join(", ")
        )));
    }
    for left_out in &selected.left_out {
        note(format!("not restored: {left_out}"));
    }
    let (pre_data, post_data) = (selected.pre_data.clone(), selected.post_data.clone());
    manifest.tables.retain(|t| selected.makes(&t.schema, &t.name));
    manifest.sequences.retain(|s| selected.makes(&s.schema, &s.name));
    manifest.materialized_views.retain(|(schema, name)| selected.makes(schema, name));
    // Beside live data a side materialized view is the restoring role's: refreshed, its query
    // (any query) runs with a superuser's rights.
    let views: Vec<String> = manifest
        .materialized_views
        .iter()
        .map(|(schema, name)| format!("{schema}.{name}"))
        .chain(schema_part::refreshed_views(&post_data).into_iter().map(|t| format!("{}.{}", t.schema, t.name)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if beside_live_data && superuser && !options.trust_snapshot_code && !views.is_empty() {
        let named: Vec<String> = views.iter().map(|name| crate::error::printable(name)).collect();
        return Err(Error::Invalid(format!(
            "the snapshot's materialized views {} would be refreshed beside live data with a superuser's \
             rights, and a view's query may read anything on this server. Connect as a login without superuser \
             that may create the side schema (--db postgres://ROLE@…), or give --trust-snapshot-code",
            named.join(", ")
        )));
    }
    if manifest.tables.is_empty() && selected.relations.is_empty() && map.is_empty() {
        return Err(Error::Invalid("the table patterns leave nothing to restore".into()));
    }
    rename_tables(manifest, map);
    tracing::debug!(tables = manifest.tables.len(), "part of the snapshot chosen");
    Ok((pre_data, post_data))
}

/// `--data-only` with `--schema-map`: every table goes under a new name, since one that did
/// not would load into the live table of its name.
fn refuse_unmapped_data_only<'t>(
    map: &[(String, String)],
    tables: impl Iterator<Item = &'t TableManifest>,
) -> Result<()> {
    if map.is_empty() {
        return Ok(());
    }
    let unmapped: Vec<String> =
        tables.filter(|t| renamed(map, &t.schema).is_none()).map(|t| format!("{}.{}", t.schema, t.name)).collect();
    if unmapped.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} would load into the live table of that name: its schema is not renamed; add --schema-map for it, or \
         choose tables with --table",
        unmapped.join(", ")
    )))
}

/// `--dry-run` without `--rows`: the tables the restore would load (each with its rows, and
/// its new name under `--schema-map`) and their bytes of data, from the snapshot alone, as
/// into an empty database (what the target holds is not looked at). Patterns and schema maps
/// are checked as the restore checks them.
pub(super) fn planned(
    part: &PartOptions,
    manifest: &Manifest,
    (pre_data, post_data): (&str, &str),
    warnings: &mut Vec<String>,
) -> Result<(Vec<RowsWritten>, u64)> {
    let filter = TableFilter::new(&part.include, &part.exclude)?;
    let map = &part.schema_map;
    let mut note = |warning: String| {
        tracing::warn!("{warning}");
        warnings.push(warning);
    };
    if !part.is_whole() && manifest.large_objects.is_some() {
        note("large objects are restored only with the whole snapshot: left out".into());
    }
    let tables: Vec<&TableManifest> = if part.data_only || part.is_whole() {
        let tables: Vec<&TableManifest> =
            manifest.tables.iter().filter(|t| filter.matches(&t.schema, &t.name)).collect();
        let names: Vec<String> = tables.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
        check_patterns(&filter, &names)?;
        check_map(map, tables.iter().map(|t| t.schema.as_str()))?;
        if part.data_only {
            refuse_unmapped_data_only(map, tables.iter().copied())?;
        }
        tables
    } else {
        let wanted = |t: &TableName| filter.matches(&t.schema, &t.name);
        let none = std::collections::BTreeSet::new();
        let spec =
            Spec { wanted: &wanted, schema_map: map, beside_live_data: false, live_schemas: &[], live_inert: &none };
        let selected = schema_part::select(pre_data, post_data, &spec);
        let names: Vec<String> = selected.candidates.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
        check_patterns(&filter, &names)?;
        check_map(map, selected.relations.iter().map(|t| t.schema.as_str()))?;
        for left_out in &selected.left_out {
            note(format!("not restored: {left_out}"));
        }
        let tables: Vec<&TableManifest> =
            manifest.tables.iter().filter(|t| selected.makes(&t.schema, &t.name)).collect();
        // As the restore: a view asked for alone is no error (it says what it leaves out).
        if tables.is_empty() && selected.relations.is_empty() && map.is_empty() {
            return Err(Error::Invalid("the table patterns leave nothing to restore".into()));
        }
        tables
    };
    let bytes = tables.iter().map(|t| t.data.bytes).sum();
    let planned = tables
        .into_iter()
        .map(|t| RowsWritten {
            table: format!("{}.{}", t.schema, t.name),
            rows: t.rows,
            inserted: None,
            updated: None,
            skipped: None,
            bytes: Some(t.data.bytes),
            restored_as: renamed(map, &t.schema).map(|schema| format!("{schema}.{}", t.name)),
        })
        .collect();
    Ok((planned, bytes))
}

/// Refuses a `--schema-map FROM` that names no schema of a table restored: a typo (`CRM` for
/// `crm`) would otherwise leave the tables under their live names.
fn check_map<'s>(map: &[(String, String)], schemas: impl Iterator<Item = &'s str>) -> Result<()> {
    // One schema to two places, two into one, or a new name that is also renamed: the first
    // failed on the server in words of its own, the others would mix schemas' objects.
    for (at, (from, to)) in map.iter().enumerate() {
        for (other_from, other_to) in &map[at + 1..] {
            let clash = if from == other_from {
                Some(format!("renames schema {from} twice"))
            } else if to == other_to {
                Some(format!("renames {from} and {other_from} both to {to}"))
            } else {
                None
            };
            if let Some(clash) = clash {
                return Err(Error::Invalid(format!("--schema-map {clash}: give each schema one new name of its own")));
            }
        }
        if map.iter().any(|(other_from, _)| other_from == to) {
            return Err(Error::Invalid(format!(
                "--schema-map renames {from} to {to}, a schema it renames too: give a name no schema restored has"
            )));
        }
    }
    let schemas: std::collections::HashSet<&str> = schemas.collect();
    let unknown: Vec<&str> = map.iter().map(|(from, _)| from.as_str()).filter(|from| !schemas.contains(from)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--schema-map names schema {}, which no table restored is in (names as the catalog has them: `crmvault ls`)",
        unknown.join(", ")
    )))
}

/// Refuses include patterns that match none of `names`: a typo would restore nothing.
fn check_patterns(filter: &TableFilter, names: &[String]) -> Result<()> {
    let unmatched = filter.unmatched_includes(names);
    if unmatched.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "no table of the snapshot matches {} (`crmvault ls` lists its tables)",
        unmatched.join(", ")
    )))
}

/// The manifest's tables, sequences and materialized views under their schemas' new names.
fn rename_tables(manifest: &mut Manifest, map: &[(String, String)]) {
    let rename = |schema: &mut String| {
        if let Some(to) = renamed(map, schema) {
            *schema = to.to_string();
        }
    };
    manifest.tables.iter_mut().for_each(|t| rename(&mut t.schema));
    manifest.sequences.iter_mut().for_each(|s| rename(&mut s.schema));
    manifest.materialized_views.iter_mut().for_each(|(schema, _)| rename(schema));
}

/// Orders `tables` (the live tables `--data-only` loads into, in one transaction, or those
/// `--rows` writes; `name` gives each one's schema and name) so that a table comes after those its foreign keys reference
/// (`pairs`: referencing, referenced): a key is checked as each table's rows load, and in name
/// order a child loaded before its parent failed the whole restore. Otherwise in the order
/// given. Tables in a cycle of keys keep their order; their deferrable keys wait for the
/// commit, others fail as before.
pub(super) fn parents_first<T>(
    tables: &mut Vec<T>,
    name: impl Fn(&T) -> (&str, &str),
    pairs: &[(TableName, TableName)],
) {
    let at = |wanted: &TableName| tables.iter().position(|t| name(t) == (wanted.schema.as_str(), wanted.name.as_str()));
    let mut parents: Vec<std::collections::BTreeSet<usize>> = vec![std::collections::BTreeSet::new(); tables.len()];
    for (child, parent) in pairs {
        if let (Some(child), Some(parent)) = (at(child), at(parent))
            && child != parent
        {
            parents[child].insert(parent);
        }
    }
    let mut placed = vec![false; tables.len()];
    // The tables not placed yet that `from` reaches through parents (itself not counted
    // unless a cycle leads back to it).
    let ancestors = |from: usize, placed: &[bool]| {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<usize> = parents[from].iter().copied().collect();
        while let Some(at) = todo.pop() {
            if !placed[at] && seen.insert(at) {
                todo.extend(parents[at].iter().copied());
            }
        }
        seen
    };
    let mut order = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        // The first table whose parents are all placed; else the first of a cycle that needs
        // no table outside it (each of its unplaced ancestors leads back to it), so that what
        // a cycle references still comes before the cycle.
        let next = (0..tables.len())
            .find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            .or_else(|| {
                (0..tables.len())
                    .find(|&i| !placed[i] && ancestors(i, &placed).iter().all(|&a| ancestors(a, &placed).contains(&i)))
            })
            .expect("a graph has a cycle that nothing outside it leads into");
        placed[next] = true;
        order.push(next);
    }
    let mut taken: Vec<Option<T>> = std::mem::take(tables).into_iter().map(Some).collect();
    tables.extend(order.into_iter().filter_map(|i| taken[i].take()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> TableName {
        let (schema, name) = text.split_once('.').expect("schema.table");
        TableName { schema: schema.into(), name: name.into() }
    }

    fn ordered(tables: &[&str], pairs: &[(&str, &str)]) -> Vec<String> {
        let mut tables: Vec<TableName> = tables.iter().map(|t| table(t)).collect();
        let pairs: Vec<(TableName, TableName)> = pairs.iter().map(|(c, p)| (table(c), table(p))).collect();
        parents_first(&mut tables, |t| (t.schema.as_str(), t.name.as_str()), &pairs);
        tables.into_iter().map(|t| format!("{}.{}", t.schema, t.name)).collect()
    }

    #[test]
    fn a_schema_map_gives_each_schema_one_new_name_of_its_own() {
        let map = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(f, t)| ((*f).to_string(), (*t).to_string())).collect()
        };
        let schemas = ["crm", "sales"];
        let check = |pairs: &[(&str, &str)]| check_map(&map(pairs), schemas.iter().copied()).map_err(|e| e.to_string());
        assert!(check(&[("crm", "crm_x"), ("sales", "sales_x")]).is_ok());
        assert!(check(&[("crm", "crm_x"), ("crm", "crm_y")]).unwrap_err().contains("renames schema crm twice"));
        assert!(check(&[("crm", "x"), ("sales", "x")]).unwrap_err().contains("renames crm and sales both to x"));
        assert!(check(&[("crm", "sales"), ("sales", "s2")]).unwrap_err().contains("a schema it renames too"));
        assert!(check(&[("CRM", "x")]).unwrap_err().contains("names schema CRM, which no table restored is in"));
    }

    #[test]
    fn data_only_loads_each_table_after_the_tables_it_references() {
        // The CRM's tables in name order, with their keys: activities references contacts and
        // deals, contacts companies, deals companies and contacts, companies users.
        let tables = ["crm.activities", "crm.companies", "crm.contacts", "crm.deals", "crm.users"];
        let pairs = [
            ("crm.activities", "crm.contacts"),
            ("crm.activities", "crm.deals"),
            ("crm.contacts", "crm.companies"),
            ("crm.deals", "crm.companies"),
            ("crm.deals", "crm.contacts"),
            ("crm.companies", "crm.users"),
            // Keys to tables not loaded, and a table's key to itself, change nothing.
            ("crm.activities", "crm.notes"),
            ("crm.users", "crm.users"),
        ];
        assert_eq!(
            ordered(&tables, &pairs),
            ["crm.users", "crm.companies", "crm.contacts", "crm.deals", "crm.activities"]
        );
        // No keys: the order given. A cycle: its tables in the order given, after their parents.
        assert_eq!(ordered(&["s.b", "s.a"], &[]), ["s.b", "s.a"]);
        let cycle = [("s.a", "s.b"), ("s.b", "s.a"), ("s.a", "s.root"), ("s.b", "s.root")];
        assert_eq!(
            ordered(&["s.a", "s.b", "s.root", "s.leaf"], &[("s.leaf", "s.a")]),
            ["s.a", "s.b", "s.root", "s.leaf"]
        );
        assert_eq!(ordered(&["s.a", "s.b", "s.root"], &cycle), ["s.root", "s.a", "s.b"]);
        // A table that references a cycle comes after the table it references, whatever its
        // name (the cycle's first table is placed first, not the first table left).
        let referencing = [("s.leaf", "s.x"), ("s.x", "s.y"), ("s.y", "s.x")];
        assert_eq!(ordered(&["s.leaf", "s.x", "s.y"], &referencing), ["s.x", "s.leaf", "s.y"]);
        // A cycle that references a table outside it comes after that table.
        let above = [("s.a", "s.b"), ("s.b", "s.a"), ("s.b", "s.z")];
        assert_eq!(ordered(&["s.a", "s.b", "s.z"], &above), ["s.z", "s.a", "s.b"]);
    }
}
