//! `restore --rows 'crm.companies:id=42' --with-related`: some rows of a snapshot, and with
//! `--with-related` the rows linked to them by foreign keys: the rows that reference them,
//! recursively (a company's contacts and deals, their activities), then every row those need
//! (a deal's owner, a contact's company), recursively. Computed from the snapshot alone (the
//! live rows may be the ones lost): each table concerned is read whole, proven (digest and
//! row count), once per step of the walk.
//!
//! Foreign keys come from the snapshot's schema ([`crate::postgres::part::declared_foreign_keys`]),
//! and into a database's own tables only those it has too are followed
//! ([`crate::postgres::part::confirm_foreign_keys`]); values are
//! compared as COPY writes them, which is how a key and the key it references are written
//! when their types are the same. A key with a NULL column references nothing (`MATCH
//! SIMPLE`).

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::postgres::part::{ForeignKey, Partitions};
use crate::postgres::script::TableName;
use crate::postgres::{LoadSession, OnConflict};
use crate::repo::{Manifest, TableManifest};

use super::rows::Lines;
use super::streams::Streams;
use super::{ExistingContents, RestoreOptions, RowsWritten};

/// `--rows TABLE:COLUMN=VALUE`: the rows of a table whose column has a value (as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsRoot {
    /// `schema.table`, or a table name alone when one schema has it.
    pub table: String,
    /// The column.
    pub column: String,
    /// Its value, as text.
    pub value: String,
}

impl std::str::FromStr for RowsRoot {
    type Err = String;

    /// `schema.table:column=value` (cut at the first `:` outside double quotes, which may
    /// hold a table's name as SQL quotes it, then at the first `=`).
    fn from_str(text: &str) -> std::result::Result<RowsRoot, String> {
        let mut quoted = false;
        let cut = text.char_indices().find_map(|(at, c)| {
            quoted ^= c == '"';
            (c == ':' && !quoted).then_some(at)
        });
        let parsed = cut.map(|at| (&text[..at], &text[at + 1..])).and_then(|(table, condition)| {
            let (column, value) = condition.split_once('=')?;
            (!table.is_empty() && !column.is_empty()).then(|| RowsRoot {
                table: table.to_string(),
                column: column.to_string(),
                value: value.to_string(),
            })
        });
        parsed.ok_or_else(|| format!("{text:?}: give TABLE:COLUMN=VALUE (crm.companies:id=42)"))
    }
}

/// The rows chosen, per table (by the snapshot's names), as COPY text.
#[derive(Debug, Default)]
pub(super) struct Related {
    /// Each table's rows, one COPY line each.
    pub(super) rows: BTreeMap<TableName, Vec<Vec<u8>>>,
    /// How many of each table's rows (the first ones) are the record: the rows asked for and
    /// those referencing them; the rest are rows the record references (shared: a deal's
    /// owner), which `--on-conflict update` leaves as the live database has them.
    pub(super) record: BTreeMap<TableName, usize>,
}

impl Related {
    /// A table's rows as one COPY stream.
    pub(super) fn copy_text(&self, table: &TableName) -> Vec<u8> {
        Self::text(self.rows.get(table).map_or(&[][..], Vec::as_slice))
    }

    /// A table's rows of the record, and the rows only referenced by it, as two COPY streams.
    fn record_and_referenced(&self, table: &TableName) -> (Vec<u8>, Vec<u8>) {
        let rows = self.rows.get(table).map_or(&[][..], Vec::as_slice);
        let record = self.record.get(table).copied().unwrap_or(0).min(rows.len());
        (Self::text(&rows[..record]), Self::text(&rows[record..]))
    }

    fn text(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut text = Vec::new();
        for line in lines {
            text.extend_from_slice(line);
            text.push(b'\n');
        }
        text
    }
}

fn name_of(table: &TableManifest) -> TableName {
    TableName { schema: table.schema.clone(), name: table.name.clone() }
}

/// Rows of a table to find: those whose `columns` hold one of `values` (COPY text fields,
/// joined by tabs).
struct Wanted {
    columns: Vec<usize>,
    values: HashSet<Vec<u8>>,
}

/// The fields `at` of a row joined by tabs; `None` when one is NULL (it references nothing).
fn key_of(line: &[u8], at: &[usize]) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    key_into(line, at, &mut Vec::new(), &mut key).then_some(key)
}

/// [`key_of`] into `key`, with `bounds` for the fields' places (both kept by the caller from
/// row to row: a scan asks it of every row of every table it reads); false for `None`. The
/// row is split only as far as the last field asked for.
fn key_into(line: &[u8], at: &[usize], bounds: &mut Vec<(usize, usize)>, key: &mut Vec<u8>) -> bool {
    let last = at.iter().copied().max().unwrap_or(0);
    bounds.clear();
    let mut start = 0;
    for tab in memchr::memchr_iter(b'\t', line) {
        if bounds.len() > last {
            break;
        }
        bounds.push((start, tab));
        start = tab + 1;
    }
    if bounds.len() <= last {
        bounds.push((start, line.len()));
    }
    key.clear();
    for (i, &column) in at.iter().enumerate() {
        let Some(&(from, to)) = bounds.get(column) else { return false };
        let field = &line[from..to];
        if field == b"\\N" {
            return false;
        }
        if i > 0 {
            key.push(b'\t');
        }
        key.extend_from_slice(field);
    }
    true
}

/// Where `names` are among a table's columns, if all are.
fn positions(table: &TableManifest, names: &[String]) -> Option<Vec<usize>> {
    names.iter().map(|name| table.columns.iter().position(|c| c == name)).collect()
}

/// Chooses the rows `roots` name, and with `with_related` the rows linked to them.
pub(super) async fn closure(
    streams: &Streams<'_>,
    manifest: &Manifest,
    (keys, partitions): (&[ForeignKey], &Partitions),
    roots: &[RowsRoot],
    with_related: bool,
) -> Result<Related> {
    let tables: HashMap<TableName, &TableManifest> = manifest.tables.iter().map(|t| (name_of(t), t)).collect();
    let mut related = Related::default();
    // Per table, the rows chosen by their place in its stream (equal rows of a table without a
    // key are rows all the same).
    let mut chosen: HashMap<TableName, HashSet<u64>> = HashMap::new();

    // The roots.
    let mut wanted: HashMap<TableName, Vec<Wanted>> = HashMap::new();
    for root in roots {
        // A partitioned table stands for its partitions, a table for itself and the tables that
        // inherit from it: the rows `SELECT … FROM table WHERE …` finds.
        let holding = |table: &TableName| -> Vec<&TableManifest> {
            partitions.with_heirs(table).iter().filter_map(|held| tables.get(held).copied()).collect()
        };
        let named = match super::select::table_named(manifest, &root.table) {
            Ok(index) => holding(&name_of(&manifest.tables[index])),
            Err(error) => {
                let parent = root
                    .table
                    .split_once('.')
                    .map(|(schema, name)| TableName { schema: schema.to_string(), name: name.to_string() });
                let leaves = parent.map(|parent| holding(&parent)).unwrap_or_default();
                if leaves.is_empty() {
                    return Err(error);
                }
                leaves
            }
        };
        for table in named {
            let column = table.columns.iter().position(|c| *c == root.column).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}.{} has no column {:?}; its columns: {}",
                    table.schema,
                    table.name,
                    root.column,
                    table.columns.join(", ")
                ))
            })?;
            // The value as COPY would write it.
            let value = copy_field(&root.value);
            wanted
                .entry(name_of(table))
                .or_default()
                .push(Wanted { columns: vec![column], values: HashSet::from([value]) });
        }
    }
    let mut frontier = scan_all(streams, &tables, &wanted, &mut chosen, &mut related).await?;
    if related.rows.values().all(Vec::is_empty) {
        let asked: Vec<String> = roots.iter().map(|r| format!("{}:{}={}", r.table, r.column, r.value)).collect();
        return Err(Error::Invalid(format!("the snapshot has no row {}", asked.join(", "))));
    }
    if !with_related {
        related.record = related.rows.iter().map(|(table, rows)| (table.clone(), rows.len())).collect();
        return Ok(related);
    }
    // Rows that reference chosen rows, recursively. Where the keys between the tables reached
    // form no cycle, table by table in layers, parents before children, so that each table is
    // read once (and again only for a key to itself); otherwise step by step.
    if let Some(layers) = layers(keys, &tables, frontier.keys()) {
        let mut looked_up: HashMap<usize, HashSet<Vec<u8>>> = HashMap::new();
        for layer in layers {
            loop {
                let mut wanted: HashMap<TableName, Vec<Wanted>> = HashMap::new();
                for (number, key) in keys.iter().enumerate() {
                    if !layer.contains(&key.table) {
                        continue;
                    }
                    let Some(child) = tables.get(&key.table) else { continue };
                    let Some(columns) = positions(child, &key.columns) else { continue };
                    let done = looked_up.entry(number).or_default();
                    let mut values = HashSet::new();
                    for parent in &key.references {
                        let (Some(lines), Some(parent_table)) = (related.rows.get(parent), tables.get(parent)) else {
                            continue;
                        };
                        let Some(referenced) = positions(parent_table, &key.referenced) else { continue };
                        values.extend(
                            lines
                                .iter()
                                .filter_map(|line| key_of(line, &referenced))
                                .filter(|v| done.insert(v.clone())),
                        );
                    }
                    if !values.is_empty() {
                        wanted.entry(key.table.clone()).or_default().push(Wanted { columns, values });
                    }
                }
                if wanted.is_empty() {
                    break;
                }
                // Until a table's key to itself finds no more.
                scan_all(streams, &tables, &wanted, &mut chosen, &mut related).await?;
            }
        }
        frontier.clear();
    }
    while !frontier.is_empty() {
        let mut wanted: HashMap<TableName, Vec<Wanted>> = HashMap::new();
        for key in keys {
            let Some(child) = tables.get(&key.table) else { continue };
            let Some(columns) = positions(child, &key.columns) else { continue };
            let mut values = HashSet::new();
            for parent in &key.references {
                let (Some(lines), Some(parent_table)) = (frontier.get(parent), tables.get(parent)) else { continue };
                let Some(referenced) = positions(parent_table, &key.referenced) else { continue };
                values.extend(lines.iter().filter_map(|line| key_of(line, &referenced)));
            }
            if !values.is_empty() {
                wanted.entry(key.table.clone()).or_default().push(Wanted { columns, values });
            }
        }
        frontier = scan_all(streams, &tables, &wanted, &mut chosen, &mut related).await?;
    }
    related.record = related.rows.iter().map(|(table, rows)| (table.clone(), rows.len())).collect();
    // Rows the chosen rows reference, recursively.
    let mut frontier: HashMap<TableName, Vec<Vec<u8>>> = related.rows.clone().into_iter().collect();
    while !frontier.is_empty() {
        let mut wanted: HashMap<TableName, Vec<Wanted>> = HashMap::new();
        for key in keys {
            let (Some(lines), Some(child)) = (frontier.get(&key.table), tables.get(&key.table)) else { continue };
            let Some(columns) = positions(child, &key.columns) else { continue };
            let values: HashSet<Vec<u8>> = lines.iter().filter_map(|line| key_of(line, &columns)).collect();
            if values.is_empty() {
                continue;
            }
            for parent in &key.references {
                let Some(parent_table) = tables.get(parent) else { continue };
                let Some(referenced) = positions(parent_table, &key.referenced) else { continue };
                // A row already chosen answers for its key: no need to read the table for it
                // (a deal's company is most often the company asked for).
                let known: HashSet<Vec<u8>> = related
                    .rows
                    .get(parent)
                    .into_iter()
                    .flatten()
                    .filter_map(|line| key_of(line, &referenced))
                    .collect();
                let values: HashSet<Vec<u8>> = values.iter().filter(|v| !known.contains(*v)).cloned().collect();
                if !values.is_empty() {
                    wanted.entry(parent.clone()).or_default().push(Wanted { columns: referenced, values });
                }
            }
        }
        frontier = scan_all(streams, &tables, &wanted, &mut chosen, &mut related).await?;
    }
    Ok(related)
}

/// `--rows` into a database with live data, without `--schema-map`: the rows chosen are
/// inserted into the live tables of the same names, parents before the rows that reference
/// them, in one transaction (a row that fails fails them all). A row whose key is taken is
/// `options.part.on_conflict`'s: the restore fails, or the live row stays, or takes the
/// snapshot's values.
pub(super) async fn into_live(
    client: &LoadSession,
    options: &RestoreOptions,
    manifest: &Manifest,
    related: &Related,
    keys: &[ForeignKey],
) -> Result<Vec<RowsWritten>> {
    let database = options.database.to_string();
    if options.existing == ExistingContents::Replace || options.parallel || options.part.data_only {
        return Err(Error::Invalid(
            "--rows into live tables is one transaction that adds rows: leave out --clean, --parallel and --data-only"
                .into(),
        ));
    }
    let involved: Vec<&TableManifest> =
        manifest.tables.iter().filter(|t| related.rows.get(&name_of(t)).is_some_and(|rows| !rows.is_empty())).collect();
    // Each table's rows go into that table, a partition's too: PostgreSQL then holds them to
    // its bounds (the snapshot's partition keys are the backup host's word, and rows written
    // through the top of a tree would land in whichever partition their keys choose).
    let wanted: Vec<(&str, &str, &[String])> =
        involved.iter().map(|t| (t.schema.as_str(), t.name.as_str(), t.columns.as_slice())).collect();
    let missing = client.missing_tables(&wanted).await?;
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "--rows writes into the live tables, and in {database}: {} (left unchanged; restore beside them with --schema-map)",
            missing.join("; ")
        )));
    }
    let on_conflict = options.part.on_conflict;
    // Parents first, as `--data-only` orders them (a cycle of keys as a unit; the server says
    // if its keys are not deferrable).
    let pairs: Vec<(TableName, TableName)> =
        keys.iter().flat_map(|key| key.references.iter().map(|parent| (key.table.clone(), parent.clone()))).collect();
    let mut order = involved;
    super::part::parents_first(&mut order, |t| (t.schema.as_str(), t.name.as_str()), &pairs);
    // At 3 a.m. a lock held by the application says so rather than waits for ever.
    client.set_lock_timeout(super::load::LOCK_TIMEOUT).await?;
    client.begin().await?;
    // A cycle of deferrable keys holds at commit.
    client.defer_constraints().await?;
    let mut written = Vec::new();
    for table in order {
        let name = name_of(table);
        let label = format!("{}.{}", table.schema, table.name);
        let rows = related.rows[&name].len() as u64;
        // The record's rows as asked; the rows it only references (shared) are inserted when
        // missing and otherwise never touched, whatever --on-conflict says: a user whose
        // password was changed since stays as the live database has it, and a user still
        // there is no conflict (under `fail` it failed every restore of a deleted company).
        let (record, referenced) = related.record_and_referenced(&name);
        let (mut inserted, mut updated) = (0, 0);
        for (text, conflict) in [(record, on_conflict), (referenced, OnConflict::Skip)] {
            if text.is_empty() {
                continue;
            }
            let (i, u) = client.insert_rows(table, &text, conflict).await.map_err(|error| {
                Error::Invalid(format!(
                    "writing the rows of {label} into the live table: {error}{}",
                    if conflict == OnConflict::Fail {
                        " (rows still there fail the restore: --on-conflict skip keeps them as they are)"
                    } else {
                        ""
                    }
                ))
            })?;
            inserted += i;
            updated += u;
        }
        written.push(RowsWritten {
            table: label,
            rows,
            inserted: Some(inserted),
            updated: Some(updated),
            skipped: Some(rows.saturating_sub(inserted + updated)),
            bytes: None,
            restored_as: None,
        });
    }
    client.commit().await?;
    Ok(written)
}

/// The tables the keys reach from `roots` (children of children …), in layers such that every
/// key between two of them goes from an earlier layer to a later one (a key of a table to
/// itself aside); `None` when they form a cycle.
fn layers<'k>(
    keys: &'k [ForeignKey],
    tables: &HashMap<TableName, &TableManifest>,
    roots: impl Iterator<Item = &'k TableName>,
) -> Option<Vec<Vec<TableName>>> {
    let mut reached: HashSet<TableName> = roots.cloned().collect();
    let mut todo: Vec<TableName> = reached.iter().cloned().collect();
    while let Some(parent) = todo.pop() {
        for key in keys.iter().filter(|key| key.references.contains(&parent) && tables.contains_key(&key.table)) {
            if reached.insert(key.table.clone()) {
                todo.push(key.table.clone());
            }
        }
    }
    // Longest path from a table without parents among those reached.
    let parents = |table: &TableName| -> Vec<&TableName> {
        keys.iter()
            .filter(|key| key.table == *table)
            .flat_map(|key| &key.references)
            .filter(|parent| *parent != table && reached.contains(*parent))
            .collect()
    };
    let mut depth: HashMap<TableName, usize> = HashMap::new();
    let mut left: Vec<TableName> = reached.iter().cloned().collect();
    left.sort();
    while !left.is_empty() {
        let ready = left.iter().position(|table| parents(table).iter().all(|p| depth.contains_key(*p)))?;
        let table = left.remove(ready);
        let level = parents(&table).iter().map(|p| depth[*p] + 1).max().unwrap_or(0);
        depth.insert(table, level);
    }
    let mut layers: Vec<Vec<TableName>> = vec![Vec::new(); depth.values().max().map_or(0, |d| d + 1)];
    for (table, level) in depth {
        layers[level].push(table);
    }
    for layer in &mut layers {
        layer.sort();
    }
    Some(layers)
}

/// Reads each table of `wanted` whole (proven), two at a time, and chooses the rows it wants
/// that are not chosen yet; returns those, per table.
async fn scan_all(
    streams: &Streams<'_>,
    tables: &HashMap<TableName, &TableManifest>,
    wanted: &HashMap<TableName, Vec<Wanted>>,
    chosen: &mut HashMap<TableName, HashSet<u64>>,
    related: &mut Related,
) -> Result<HashMap<TableName, Vec<Vec<u8>>>> {
    let mut names: Vec<&TableName> = wanted.keys().collect();
    names.sort();
    let scans = names.into_iter().map(|name| {
        let table = tables[name];
        let conditions = &wanted[name];
        let mut seen = chosen.remove(name).unwrap_or_default();
        async move {
            let mut new = Vec::new();
            let mut at = 0u64;
            let (mut bounds, mut key) = (Vec::new(), Vec::new());
            scan(streams, table, |line| {
                let matches = conditions
                    .iter()
                    .any(|w| key_into(line, &w.columns, &mut bounds, &mut key) && w.values.contains(&key));
                if matches && seen.insert(at) {
                    new.push(line.to_vec());
                }
                at += 1;
            })
            .await?;
            Ok::<_, Error>((name, seen, new))
        }
    });
    let scanned: Vec<_> = futures::stream::iter(scans).buffered(2).collect().await;
    let mut found = HashMap::new();
    for result in scanned {
        let (name, seen, new) = result?;
        chosen.insert(name.clone(), seen);
        related.rows.entry(name.clone()).or_default().extend(new.iter().cloned());
        if !new.is_empty() {
            found.insert(name.clone(), new);
        }
    }
    Ok(found)
}

/// Calls `row` for every row of a table, then checks its digest and row count.
async fn scan(streams: &Streams<'_>, table: &TableManifest, mut row: impl FnMut(&[u8])) -> Result<()> {
    let label = format!("{}.{}", table.schema, table.name);
    let mut digest = streams.mac_key.hasher();
    let mut lines = Lines::default();
    let mut count = 0u64;
    let chunks = streams.chunks(&table.data);
    futures::pin_mut!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        digest.update(&chunk);
        lines.each(&chunk, |line| {
            count += 1;
            row(line);
        });
    }
    lines.end(|line| {
        count += 1;
        row(line);
    });
    super::check_table(&label, table, &digest, count)
}

/// A value as a COPY text field (backslash, tab, line breaks escaped).
fn copy_field(value: &str) -> Vec<u8> {
    let mut field = Vec::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'\\' => field.extend_from_slice(b"\\\\"),
            b'\t' => field.extend_from_slice(b"\\t"),
            b'\n' => field.extend_from_slice(b"\\n"),
            b'\r' => field.extend_from_slice(b"\\r"),
            other => field.push(other),
        }
    }
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_parse_and_values_are_written_as_copy_writes_them() {
        let root: RowsRoot = "crm.companies:id=42".parse().unwrap();
        assert_eq!(root, RowsRoot { table: "crm.companies".into(), column: "id".into(), value: "42".into() });
        assert!("crm.companies".parse::<RowsRoot>().is_err() && ":id=1".parse::<RowsRoot>().is_err());
        // A `:` inside a quoted name is the name's.
        let root: RowsRoot = "\"a:b\".t:code=x:y".parse().unwrap();
        assert_eq!(root, RowsRoot { table: "\"a:b\".t".into(), column: "code".into(), value: "x:y".into() });
        assert_eq!(copy_field("a\tb\\c\nd"), b"a\\tb\\\\c\\nd");
        assert_eq!(key_of(b"1\t\\N\tx", &[0, 2]), Some(b"1\tx".to_vec()));
        assert_eq!(key_of(b"1\t\\N\tx", &[1]), None, "a NULL references nothing");
        assert_eq!(key_of(b"1\t2\tx", &[2, 0]), Some(b"x\t1".to_vec()), "in the order asked");
        assert_eq!(key_of(b"1\t2", &[2]), None, "a row without the field");
        assert_eq!(key_of(b"1\t\t3", &[1]), Some(Vec::new()), "an empty field is a value");
        assert_eq!(key_of(b"abc", &[0]), Some(b"abc".to_vec()));
    }
}
