//! Part of a snapshot's schema, for a restore of some tables (`restore --table`,
//! `--exclude-table`) or into other schemas (`--schema-map crm=crm_restored`): which entries of
//! pg_dump's script to run, and the script with the schemas renamed.
//!
//! What each entry creates and names is read from its statements with the script's lexer (the
//! header comment's names are ambiguous once a name holds `; `). An entry that creates a
//! relation (table, view, materialized view, sequence, foreign table) runs when that relation
//! is kept; an index or constraint runs when its table is; any other entry that names a
//! relation or index of the script (a default, a trigger, a comment, a grant, a foreign key, a
//! sequence's `OWNED BY`) runs when every one it names is kept. Entries that name none (schemas,
//! types, functions, extensions) run into an empty database; beside live data only those of a
//! renamed schema do, the rest being the live database's own.
//!
//! Tables kept: those the patterns match, the partitions of a partitioned table they match,
//! and what a kept table cannot be created without (its partitioned parent, the tables it
//! inherits from). A view or materialized view the patterns match is kept when every relation
//! it names is; a sequence when the table that owns it is (an unowned one as other objects
//! are). A foreign key to a table left out is left out, and said.
//!
//! Renaming rewrites every name qualified by a renamed schema (`crm.contacts`, `crm.stage`,
//! `OWNED BY crm.t.id`), the schema's own name where a statement names a schema (`CREATE
//! SCHEMA`, `ON SCHEMA`, `IN SCHEMA`), and the `'crm.seq'::regclass` literals of column
//! defaults. The bodies of SQL and PL/pgSQL functions and procedures are renamed likewise (they
//! are SQL's tokens), and so are the schemas of their `SET search_path`; other languages'
//! bodies, and names built at run time (`EXECUTE 'INSERT INTO crm.' || …`), are left as written.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::script::{self, Kind, Lexer, TableName, Token};
use super::{quote_ident, quote_literal};

/// Which part of the schema to make.
pub struct Spec<'a> {
    /// Whether a table, view or materialized view is asked for (by `schema.name`).
    pub wanted: &'a dyn Fn(&TableName) -> bool,
    /// Schemas renamed: (from, to).
    pub schema_map: &'a [(String, String)],
    /// Whether objects that are not relations (schemas, types, functions, extensions) are made
    /// too (into an empty database), or only those of a renamed schema (beside live data).
    pub beside_live_data: bool,
    /// The schemas of the database beside whose data the part is made: no statement may name an
    /// object of one of them but through a renamed schema (`pg_catalog` aside), or one of
    /// `live_inert`.
    pub live_schemas: &'a [String],
    /// Objects of the live schemas that a side object may name, since naming them runs no code
    /// a live role wrote and changes nothing of theirs (`schema`, `name`): an extension's types
    /// (`public.hstore`, `public.citext`), enums, plain domains.
    pub live_inert: &'a BTreeSet<(String, String)>,
}

/// The part: scripts to run, and what they make.
#[derive(Debug, Default)]
pub struct Part {
    /// Pre-data entries kept, renamed (with the script's preamble).
    pub pre_data: String,
    /// Post-data entries kept, renamed (with the script's preamble).
    pub post_data: String,
    /// Relations made (tables, views, materialized views, sequences), by their names in the
    /// snapshot.
    pub relations: BTreeSet<TableName>,
    /// What was asked for or belongs to it and is not made, each said in a line.
    pub left_out: Vec<String>,
    /// Relations asked for that cannot be made beside live data, each with why: their
    /// definition names a live object (a restore of them there is refused).
    pub unmade: Vec<String>,
    /// Every table, view and materialized view of the script (what patterns may name).
    pub candidates: BTreeSet<TableName>,
    /// The snapshot's own code the restore may run (`schema.name` as the snapshot names them):
    /// every routine, operator, aggregate, operator class and family the part makes but trigger
    /// functions, and triggers made before the rows load.
    pub runs_own_code: BTreeSet<String>,
}

impl Part {
    /// Whether the part makes the relation the snapshot calls `schema.name`.
    pub fn makes(&self, schema: &str, name: &str) -> bool {
        self.relations.contains(&TableName { schema: schema.to_string(), name: name.to_string() })
    }
}

/// A schema's new name under `map`, or `None` if it keeps its name.
pub fn renamed<'m>(map: &'m [(String, String)], schema: &str) -> Option<&'m str> {
    map.iter().find(|(from, _)| from == schema).map(|(_, to)| to.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Table,
    View,
    Sequence,
}

/// What one entry's statements create and name.
#[derive(Debug, Default)]
#[allow(clippy::struct_excessive_bools, reason = "independent facts read off one entry")]
struct Facts {
    /// The relation it creates.
    creates: Option<(TableName, Relation)>,
    /// The index it creates (`CREATE INDEX`, or a primary key, unique or exclusion constraint),
    /// with its table.
    index: Option<(TableName, TableName)>,
    /// Every `schema.name` it names.
    names: BTreeSet<TableName>,
    /// `ALTER TABLE parent ATTACH PARTITION child`: (parent, child).
    attach: Option<(TableName, TableName)>,
    /// `CREATE TABLE child (…) INHERITS (parent, …)`: the parents.
    inherits: Vec<TableName>,
    /// A sequence and the table that owns it (`OWNED BY`, or an identity column).
    owned: Option<(TableName, TableName)>,
    /// The schema a statement names as such (`CREATE SCHEMA s`, `ON SCHEMA s`, `IN SCHEMA s`).
    schema: Option<String>,
    /// A foreign key (`FOREIGN KEY … REFERENCES`).
    foreign_key: bool,
    /// The table of its first `ALTER TABLE` (a foreign key's referencing table).
    altered: Option<TableName>,
    /// `CREATE EXTENSION`.
    extension: bool,
    /// A statement on an object of the whole database or server, in no schema (an extension,
    /// a publication and the tables it publishes, a subscription, an event trigger, a role, a
    /// server, a foreign data wrapper, a user mapping, a language).
    global: bool,
    /// Per statement (but `SET`, `RESET` and `SELECT pg_catalog.set_config(…)`): the schema of
    /// the object it acts on, the first it names (`CREATE FUNCTION app.f(c crm.t)`: `app`;
    /// `GRANT … ON SCHEMA crm`: `crm`; `CREATE OPERATOR app.### (…)`: `app`), if it names one.
    statements: Vec<Option<String>>,
    /// Statements that may not run beside live data whatever they name ([`refused_beside_live`]),
    /// each said.
    refused: Vec<String>,
    /// The routines, operators, aggregates, operator classes and families it makes, but
    /// trigger functions (`schema.name`).
    own_code: Vec<String>,
    /// The triggers it makes (which fire for the rows COPY loads when made in pre-data).
    triggers: Vec<String>,
    /// Every schema a name of its statements is qualified with (`app` in `app.f(x)`, `public`
    /// in `db.public.t`), and that of every literal that is a qualified name (`'app.seq'`):
    /// aliases too (`d` in `d.id`), which are harmless unless they spell a live schema. With
    /// the name it qualifies (`t`; `f()` when a parenthesis follows but a type's modifier;
    /// `###` for `OPERATOR(app.###)`).
    qualifiers: BTreeSet<(String, String)>,
    /// The schemas of objects a statement reaches beyond its own, which making it would change
    /// (a foreign key's table gains triggers, a parent gains a child, an operator its
    /// commutator or negator, a family its members): `REFERENCES`, `INHERITS`, `PARTITION OF`,
    /// `ATTACH PARTITION`, `COMMUTATOR`, `NEGATOR`, `FAMILY`.
    reaches: Vec<String>,
    /// Names inside a chain of three or more (`db.crm.contacts`: `crm`), where a schema would
    /// stand after a database's name ([`within_a_name`]), which renaming leaves as they are.
    inside: Vec<String>,
    /// It makes a large object, or sets its owner, privileges or comment: a part of a snapshot
    /// leaves large objects out (their data comes only with the whole snapshot).
    large_object: bool,
}

/// The words after which a statement names an object it changes by being made.
const REACHING: [&str; 6] = ["references", "inherits", "of", "commutator", "negator", "family"];

/// Characters of an operator's name.
const OPERATOR_CHARS: &str = "+-*/<>=~!@#%^&|`?";

/// The schema of the first object a statement names: a qualified name or operator, or the
/// name after `SCHEMA` in `CREATE SCHEMA`, `ON SCHEMA`, `IN SCHEMA`, `ALTER SCHEMA`.
fn statement_schema(tokens: &[Token<'_>]) -> Option<String> {
    for at in 0..tokens.len() {
        if at > 0 && tokens[at - 1].is_punct('.') {
            continue;
        }
        if is_word(tokens.get(at), "schema")
            && at > 0
            && ["create", "on", "in", "alter", "with"].iter().any(|w| is_word(tokens.get(at - 1), w))
        {
            let exists = is_word(tokens.get(at + 1), "if") && is_word(tokens.get(at + 2), "not");
            let name_at = if exists { at + 4 } else { at + 1 };
            if let Some(name) = tokens.get(name_at).and_then(name_of) {
                return Some(name);
            }
        }
        let Some(schema) = tokens.get(at).and_then(name_of) else { continue };
        if !tokens.get(at + 1).is_some_and(|t| t.is_punct('.')) {
            continue;
        }
        let named = tokens.get(at + 2).is_some_and(|t| name_of(t).is_some() || is_operator(t));
        if named {
            return Some(schema);
        }
    }
    None
}

/// A script's statements, cut at `;` as psql cuts them: not inside the `BEGIN ATOMIC … END`
/// body of a `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (where `BEGIN` and `CASE` open what `END`
/// closes), and anywhere else at every `;`. A restore beside live data checks each statement
/// and sends each alone ([`statements_of`]), so that a cut the server would read otherwise
/// makes it refuse the statement, never run more than was checked.
fn statements<'t, 'a>(tokens: &'t [Token<'a>]) -> Vec<&'t [Token<'a>]> {
    let mut statements = Vec::new();
    // Brackets open, and `BEGIN ATOMIC`/`CASE` opened and not yet closed by `END` in a body
    // (outside brackets: a parameter or column named `begin` opens nothing).
    let (mut start, mut brackets, mut depth) = (0, 0i32, 0usize);
    for at in 0..tokens.len() {
        let token = &tokens[at];
        if token.is_punct('(') {
            brackets += 1;
        } else if token.is_punct(')') {
            brackets -= 1;
        } else if token.is_punct(';') && depth == 0 {
            if at > start {
                statements.push(&tokens[start..at]);
            }
            (start, brackets) = (at + 1, 0);
        } else if brackets == 0 && !(at > 0 && tokens[at - 1].is_punct('.')) {
            if depth == 0
                && is_word(Some(token), "begin")
                && is_word(tokens.get(at + 1), "atomic")
                && creates_routine(&tokens[start..at])
            {
                depth = 1;
            } else if depth > 0 && is_word(Some(token), "case") {
                depth += 1;
            } else if depth > 0 && is_word(Some(token), "end") {
                depth -= 1;
            }
        }
    }
    if start < tokens.len() {
        statements.push(&tokens[start..]);
    }
    statements
}

/// Where the kind of object a `CREATE [OR REPLACE] …` statement makes is named.
fn created_at(statement: &[Token<'_>]) -> usize {
    if is_word(statement.get(1), "or") && is_word(statement.get(2), "replace") { 3 } else { 1 }
}

/// A statement's tokens outside brackets, with their places.
fn outside_brackets<'t, 'a>(statement: &'t [Token<'a>]) -> impl Iterator<Item = (usize, &'t Token<'a>)> {
    let mut depth = 0i32;
    statement.iter().enumerate().filter(move |(_, token)| {
        if token.is_punct('(') {
            depth += 1;
        } else if token.is_punct(')') {
            depth -= 1;
        } else {
            return depth == 0;
        }
        false
    })
}

/// Whether a statement begins `CREATE [OR REPLACE] FUNCTION` or `… PROCEDURE`.
fn creates_routine(statement: &[Token<'_>]) -> bool {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    let kind = created_at(statement);
    word(0, "create") && (word(kind, "function") || word(kind, "procedure"))
}

/// Code of the snapshot's own that a statement makes and a restore may run.
enum OwnCode {
    /// A routine, operator, aggregate, operator class or family (`schema.name`).
    Routine(String),
    /// A trigger (its name), which fires for the rows COPY loads when made before them.
    Trigger(String),
}

/// The code of the snapshot's own a statement makes: every routine, operator, aggregate,
/// operator class and family (how each is reached is not worth guessing: calls are spelled many
/// ways, and an operator class is called unnamed), but a trigger function, which nothing but a
/// trigger may call (unless it is in C or `internal`: making one loads a library of the server);
/// members added to an operator family; text search templates and parsers (the server's C
/// functions pointed at what they were not written for); casts between the server's own types
/// (`WITHOUT FUNCTION`: one type's bytes read as another's); and every trigger.
fn own_code(statement: &[Token<'_>]) -> Option<OwnCode> {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    let kind = created_at(statement);
    if word(0, "alter") && word(1, "operator") && (word(2, "family") || word(2, "class")) {
        let name = qualified_at(statement, 3).map_or_else(String::new, |n| format!("{}.{}", n.schema, n.name));
        return Some(OwnCode::Routine(format!("operator family {name}")));
    }
    if !word(0, "create") {
        return None;
    }
    if word(kind, "text") && word(kind + 1, "search") && (word(kind + 2, "template") || word(kind + 2, "parser")) {
        let name = qualified_at(statement, kind + 3).map_or_else(String::new, |n| format!("{}.{}", n.schema, n.name));
        return Some(OwnCode::Routine(format!("text search {} {name}", statement[kind + 2].text.to_ascii_lowercase())));
    }
    if word(kind, "trigger") || (word(kind, "constraint") && word(kind + 1, "trigger")) {
        let at = if word(kind, "constraint") { kind + 2 } else { kind + 1 };
        return Some(OwnCode::Trigger(statement.get(at).and_then(name_of).unwrap_or_default()));
    }
    // A cast made with a function calls it wherever a value is cast (`x::oid`), unnamed.
    if word(kind, "cast") {
        let with_function = (1..statement.len()).any(|at| word(at - 1, "with") && word(at, "function"));
        let of_the_server = !qualified_names(statement).any(|schema| !is_system_schema(&schema));
        return (with_function || of_the_server).then(|| OwnCode::Routine(format!("a cast {}", cast_of(statement))));
    }
    let defines = ["function", "procedure", "aggregate", "operator"].iter().any(|w| word(kind, w));
    // `RETURNS trigger` right after the parameters, as pg_dump writes it: a function with OUT
    // parameters needs no RETURNS clause, and its body may say `returns trigger` anywhere.
    let trigger_function = word(kind, "function")
        && (kind + 1..statement.len())
            .find(|at| statement[*at].is_punct('('))
            .and_then(|open| closing_bracket(statement, open))
            .is_some_and(|close| {
                word(close + 1, "returns")
                    && word(close + 2, "trigger")
                    && !statement.get(close + 3).is_some_and(|t| t.is_punct('.') || t.is_punct('['))
            });
    if !defines || (trigger_function && !is_native(statement)) {
        return None;
    }
    let name = (kind + 1..statement.len().min(kind + 4))
        .find_map(|at| qualified_or_operator(statement, at))
        .map_or_else(|| "a routine".to_string(), |n| format!("{}.{}", n.schema, n.name));
    Some(OwnCode::Routine(name))
}

/// The schemas a statement qualifies names with (`crm` of `crm.t`, not `db` of `db.crm.t`),
/// in order.
fn qualified_names<'s>(statement: &'s [Token<'s>]) -> impl Iterator<Item = String> + 's {
    (0..statement.len()).filter_map(move |at| {
        let after_dot = at > 0 && statement[at - 1].is_punct('.');
        let qualifies = statement.get(at + 1).is_some_and(|t| t.is_punct('.'))
            && statement.get(at + 2).is_some_and(|t| name_of(t).is_some() || is_operator(t));
        (!after_dot && qualifies).then(|| name_of(&statement[at])).flatten()
    })
}

/// Whether a schema is one of the server's own: `pg_catalog`, `information_schema`, toast.
fn is_system_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema" || schema.starts_with("pg_toast")
}

/// The place of the `)` that closes the bracket opened at `open`.
fn closing_bracket(statement: &[Token<'_>], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (at, token) in statement.iter().enumerate().skip(open) {
        if token.is_punct('(') {
            depth += 1;
        } else if token.is_punct(')') {
            depth -= 1;
            if depth == 0 {
                return Some(at);
            }
        }
    }
    None
}

/// `(source AS target)` of a `CREATE CAST` statement, as written.
fn cast_of(statement: &[Token<'_>]) -> String {
    let Some(open) = statement.iter().position(|t| t.is_punct('(')) else { return String::new() };
    let close = closing_bracket(statement, open).unwrap_or(open);
    statement[open..=close].iter().map(|t| t.text).collect::<Vec<_>>().join(" ").replace("( ", "(").replace(" )", ")")
}

/// Whether a statement says `LANGUAGE c` or `LANGUAGE internal` (a routine that runs what a
/// library of the server holds), the name spelled as a word, an identifier or a string of any
/// quoting (`LANGUAGE $$internal$$`).
fn is_native(statement: &[Token<'_>]) -> bool {
    (1..statement.len()).any(|at| {
        let token = &statement[at];
        let text = match token.kind {
            // `$tag$name$tag$`: the body between the tags.
            Kind::Literal if token.text.starts_with('$') => {
                let tag_end = token.text[1..].find('$').map_or(0, |end| end + 2);
                let body_end = token.text.len().saturating_sub(tag_end).max(tag_end);
                &token.text[tag_end..body_end]
            }
            _ => token.text,
        };
        let language = text.trim_matches(['\'', '"']).to_ascii_lowercase();
        is_word(statement.get(at - 1), "language") && (language == "c" || language == "internal")
    })
}

/// The statements of `sql` as [`statements`] cuts them, each as written, without its `;`.
pub fn statements_of(sql: &str) -> Vec<&str> {
    let tokens = significant(sql);
    statements(&tokens)
        .into_iter()
        .map(|statement| {
            let (first, last) = (&statement[0], &statement[statement.len() - 1]);
            &sql[first.start..last.start + last.text.len()]
        })
        .collect()
}

/// Whether two statements are the same as the server reads them: the same tokens, words in
/// any case, whatever spaces and comments lie between (`select  pg_catalog.set_config(…)`).
pub fn same_statement(a: &str, b: &str) -> bool {
    let (a, b) = (significant(a), significant(b));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x.kind == y.kind
                && if x.kind == Kind::Word { x.text.eq_ignore_ascii_case(y.text) } else { x.text == y.text }
        })
}

/// What pg_dump writes for an object of a schema, after `CREATE [OR REPLACE]`: beside live data
/// no other `CREATE` runs.
const CREATED_BESIDE_LIVE: [&str; 22] = [
    "table",
    "unlogged",
    "view",
    "recursive",
    "materialized",
    "sequence",
    "index",
    "unique",
    "function",
    "procedure",
    "type",
    "domain",
    "trigger",
    "constraint",
    "rule",
    "policy",
    "aggregate",
    "operator",
    "collation",
    "text",
    "statistics",
    "schema",
];

/// Functions of `pg_catalog` that change something besides their result (settings, sequences,
/// large objects, other sessions, the server), read the server's files or run SQL given as a
/// string (`query_to_xml`): an expression of the snapshot's schema that the
/// restore evaluates (a check constraint, a materialized view's query) must not call them.
pub const CHANGING_FUNCTIONS: &[&str] = &[
    "pg_import_system_collations",
    // SQL in a string, run with the session's rights.
    "query_to_",
    "cursor_to_",
    "table_to_",
    "schema_to_",
    "database_to_",
    "ts_rewrite",
    "ts_stat",
    // The server's files and processes.
    "pg_read_",
    "pg_ls_",
    "pg_stat_file",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_log_backend_memory_contexts",
    "pg_backup_",
    // Replication: slots, origins, messages in the WAL.
    "pg_logical_",
    "pg_replication_",
    "pg_create_",
    "pg_copy_",
    "pg_drop_replication_slot",
    "set_config",
    "setval",
    "nextval",
    "lo_",
    "be_lo_",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_advisory",
    "pg_try_advisory",
    "pg_notify",
    "pg_reload_conf",
    // Holding the restore (and its locks) as long as it says.
    "pg_sleep",
    // The server's configuration files and log, as a superuser reads them.
    "pg_show_all",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_current_logfile",
    // Other sessions' queries, as a superuser sees them.
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_reset",
    "pg_file",
    "pg_switch_wal",
    "pg_wal_replay_",
    // The server's build, memory and replication state.
    "pg_config",
    "pg_get_shmem_allocations",
    "pg_get_backend_memory_contexts",
    "pg_show_replication_origin_status",
    "pg_stat_get_backend_",
];

/// Why a statement may not run beside live data, whatever it names: one that is not the
/// definition of an object (pg_dump's `CREATE`, `ALTER`, `COMMENT`, `SECURITY LABEL`, `REFRESH
/// MATERIALIZED VIEW`), such as a `DROP`, a query, a change of rows or of the session, or a grant
/// (the side objects carry none of the snapshot's); a `CREATE … AS` query that runs as the
/// object is made; an `ALTER … SET SCHEMA` into a live schema; or one that calls a
/// function of [`CHANGING_FUNCTIONS`] (unqualified names are `pg_catalog`'s: the script runs
/// with an empty `search_path`), except `nextval` in a column's default, which loading does not
/// evaluate.
fn refused_beside_live(statement: &[Token<'_>]) -> Option<String> {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    let first = statement.first().map_or_else(String::new, |t| t.text.to_ascii_lowercase());
    let kind_allowed = match first.as_str() {
        "create" => {
            let kind = created_at(statement);
            let what = statement.get(kind).map_or_else(String::new, |t| t.text.to_ascii_lowercase());
            let created = CREATED_BESIDE_LIVE.contains(&what.as_str());
            // `CREATE TABLE … AS` and a materialized view made with its data run a query.
            let query = matches!(what.as_str(), "table" | "unlogged")
                && outside_brackets(statement).any(|(_, token)| is_word(Some(token), "as"));
            let n = statement.len();
            let without_data = n >= 3 && word(n - 3, "with") && word(n - 2, "no") && word(n - 1, "data");
            created && !query && (what != "materialized" || without_data)
        }
        // Not `ALTER … SET SCHEMA`, which would move a side object among the live ones, nor
        // `ALTER DEFAULT PRIVILEGES` (the side objects carry none of the snapshot's grants).
        "alter" => !word(1, "default") && !(1..statement.len()).any(|at| word(at - 1, "set") && word(at, "schema")),
        "comment" => true,
        "security" => word(1, "label"),
        "refresh" => word(1, "materialized"),
        _ => false,
    };
    if !kind_allowed {
        return Some(format!("{} statement", first.to_ascii_uppercase()));
    }
    // What the server evaluates as the statement runs leaves nothing for the tripwire to find.
    if let Some(why) = evaluated_as_it_runs(statement) {
        return Some(why);
    }
    // Unicode escapes (`U&"\\0066"`) spell a name this lexer would not read as the server does:
    // pg_dump writes names as they are.
    if unicode_escaped(statement) {
        return Some("a Unicode-escaped name or string".into());
    }
    if names_temporary_schema(statement) {
        return Some("a name in the session's temporary schema".into());
    }
    if escape_string(statement) {
        return Some("an escape string (E'…'), which pg_dump does not write".into());
    }
    // A rule `ON SELECT` turns a table into a view running what it says.
    if word(0, "create")
        && (2..statement.len()).any(|at| word(at - 2, "as") && word(at - 1, "on") && word(at, "select"))
    {
        return Some("a rule on SELECT".into());
    }
    // A routine in C (or the server's internal language) runs whatever a library holds.
    if is_native(statement) {
        return Some("a routine in C".into());
    }
    // The side objects are the restoring role's: no `OWNER TO`, no `CREATE SCHEMA …
    // AUTHORIZATION` (pg_dump's owners are left out by statement beside live data, but not one
    // the script leaves unterminated).
    let owner = (1..statement.len()).any(|at| word(at - 1, "owner") && word(at, "to"));
    if owner || statement.iter().any(|t| is_word(Some(t), "authorization")) {
        return Some("a change of owner".into());
    }
    changing_call(statement).map(|name| format!("a call of {name}"))
}

/// What follows `CREATE` or `ALTER` in a statement on the server's objects, outside the
/// database restored into: pg_dump writes none (`pg_dumpall` does).
const SERVER_OBJECTS: [&str; 6] = ["role", "user", "group", "database", "tablespace", "system"];

/// What `GRANT … ON` and `REVOKE … ON` may not name in a restore: the server's objects.
const SERVER_PRIVILEGES: [&str; 3] = ["database", "tablespace", "parameter"];

/// The extensions whose control files put them in `pg_catalog` (pg_dump writes `CREATE
/// EXTENSION … WITH SCHEMA pg_catalog` for them): the procedural languages.
pub const EXTENSIONS_IN_PG_CATALOG: &[&str] = &["plpgsql", "plperl", "plperlu", "pltcl", "pltclu", "plpython3u"];

/// Extensions known to keep to the database they are made in: what they add reads and writes
/// nothing outside it (no other database or server, no file, no program, no network, no
/// background work). Any other, made by the snapshot's script, counts as code that may reach
/// outside ([`vet`]): `dblink`, `postgres_fdw`, `file_fdw`, `adminpack`, `pg_cron`, `http`, an
/// untrusted language; `tablefunc` (`crosstab` runs SQL given as a string), `pg_stat_statements`
/// (other sessions' queries), `postgis` (functions that run SQL they build).
pub const CONTAINED_EXTENSIONS: &[&str] = &[
    "plpgsql",
    "lo",
    "amcheck",
    "pgcrypto",
    "uuid-ossp",
    "citext",
    "pg_trgm",
    "hstore",
    "btree_gist",
    "btree_gin",
    "unaccent",
    "fuzzystrmatch",
    "intarray",
    "ltree",
    "cube",
    "earthdistance",
    "isn",
    "seg",
    "intagg",
    "bloom",
    "tsm_system_rows",
    "tsm_system_time",
    "dict_int",
    "dict_xsyn",
    "moddatetime",
    "vector",
];

/// Why a statement may not run in a restore into an empty database (a whole snapshot, or
/// tables of it): one pg_dump does not write for a database's objects. Only definitions
/// (`CREATE`, `ALTER`, `COMMENT`, `SECURITY LABEL`, grants on the database's objects, `ALTER
/// DEFAULT PRIVILEGES`, `REFRESH MATERIALIZED VIEW`) and pg_dump's `SELECT
/// pg_catalog.lo_create('…')` run: no query, no change of rows, no `COPY`, `DO`, `CALL`, no
/// transaction control (a `COMMIT` would end the restore's all-or-nothing), no `SET` but the
/// [`setting`]s, nothing on roles, databases, tablespaces or the server's settings, no
/// subscription that connects, no `CREATE … AS` query; and no call of a function of
/// [`CHANGING_FUNCTIONS`] outside a routine's definition (whose body counts as the snapshot's
/// own code: [`own_code`]), but `nextval` in a column's default.
fn refused_into_empty(statement: &[Token<'_>]) -> Option<String> {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    let first = statement.first().map_or_else(String::new, |t| t.text.to_ascii_lowercase());
    let n = statement.len();
    let kind_allowed = match first.as_str() {
        "create" => {
            let kind = created_at(statement);
            let what = statement.get(kind).map_or_else(String::new, |t| t.text.to_ascii_lowercase());
            // `CREATE [GLOBAL | LOCAL] {TEMP | TEMPORARY} [UNLOGGED] TABLE`.
            let temporary = ["temp", "temporary", "global", "local"].iter().any(|w| word(kind, w));
            let mut at = kind;
            while ["temp", "temporary", "global", "local", "unlogged"].iter().any(|w| word(at, w)) {
                at += 1;
            }
            let table = word(at, "table");
            let query = table && outside_brackets(statement).any(|(_, token)| is_word(Some(token), "as"));
            let without_data = n >= 3 && word(n - 3, "with") && word(n - 2, "no") && word(n - 1, "data");
            // pg_dump makes a schema alone: its elements (`CREATE SCHEMA s CREATE TRIGGER …`)
            // would be made unseen.
            let schema_alone = what != "schema" || n <= kind + 2 || (n == kind + 5 && word(kind + 1, "if"));
            // pg_dump makes a subscription that does not connect (`WITH (connect = false, …)`).
            let connects = what == "subscription"
                && !statement
                    .windows(3)
                    .any(|w| is_word(Some(&w[0]), "connect") && w[1].is_punct('=') && is_word(Some(&w[2]), "false"));
            let user_mapping = what == "user" && word(kind + 1, "mapping");
            (!SERVER_OBJECTS.contains(&what.as_str()) || user_mapping)
                && !temporary
                && schema_alone
                && !query
                && (what != "materialized" || without_data)
                && !connects
        }
        // A subscription only changes owner (`ENABLE` would connect). No object changes name or
        // schema (pg_dump writes neither): what was checked under one name stays what runs.
        "alter" => {
            let what = statement.get(1).map_or_else(String::new, |t| t.text.to_ascii_lowercase());
            // `RENAME [COLUMN | CONSTRAINT] … TO`, not a column or table called `rename`.
            let renames = (1..n).any(|at| {
                let subcommand = word(at, "rename")
                    && !statement[at - 1].is_punct('.')
                    && !word(at - 1, "column")
                    && (word(at + 1, "to")
                        || word(at + 1, "column")
                        || word(at + 1, "constraint")
                        || word(at + 2, "to"));
                subcommand || (word(at - 1, "set") && word(at, "schema"))
            });
            (!SERVER_OBJECTS.contains(&what.as_str()) || (what == "user" && word(2, "mapping")))
                && (what != "subscription" || (n == 6 && word(3, "owner") && word(4, "to")))
                && !renames
        }
        // Not on a role, a database or a tablespace: the server's, shared by every database.
        "comment" | "security" => {
            (first == "comment" || word(1, "label"))
                && kind_at(statement).is_some_and(|at| !SERVER_OBJECTS.iter().any(|w| word(at, w)))
        }
        // On an object of the database: `GRANT role TO role` (no `ON`) is a membership.
        "grant" | "revoke" => kind_at(statement).is_some_and(|at| !SERVER_PRIVILEGES.iter().any(|w| word(at, w))),
        "refresh" => word(1, "materialized"),
        "select" => is_large_object_made(statement),
        _ => false,
    };
    if !kind_allowed {
        return Some(format!("{} statement", first.to_ascii_uppercase()));
    }
    // The server's own objects (`pg_catalog`'s functions and tables) are not the snapshot's to
    // grant, alter, comment on or add to: `GRANT ALL ON ALL FUNCTIONS IN SCHEMA pg_catalog TO
    // PUBLIC` would give every user of the database the server's files.
    let system = is_system_schema;
    let target = match first.as_str() {
        // `CREATE EXTENSION x [WITH] SCHEMA pg_catalog` puts its objects there.
        "create" if word(created_at(statement), "extension") => {
            let kind = created_at(statement);
            let at = if word(kind + 1, "if") { kind + 4 } else { kind + 1 };
            let name = statement.get(at).and_then(name_of).unwrap_or_default();
            let schema = (1..n).find(|at| word(*at - 1, "schema")).and_then(|at| name_of(&statement[at]));
            schema.filter(|schema| !(schema == "pg_catalog" && EXTENSIONS_IN_PG_CATALOG.contains(&name.as_str())))
        }
        "create" => {
            let kind = created_at(statement);
            (kind + 1..statement.len().min(kind + 4))
                .find_map(|at| qualified_or_operator(statement, at))
                .map(|n| n.schema)
        }
        "select" | "refresh" => None,
        _ => statement_schema(statement),
    };
    if target.as_deref().is_some_and(system) {
        return Some(format!("{} of an object of the server's own", first.to_ascii_uppercase()));
    }
    // Every object of a grant's list (`ON TABLE crm.t, pg_catalog.pg_authid`).
    if matches!(first.as_str(), "grant" | "revoke") && qualified_names(statement).any(|schema| system(&schema)) {
        return Some(format!("{} of an object of the server's own", first.to_ascii_uppercase()));
    }
    // The server's own languages and access methods, which have no schema.
    if matches!(first.as_str(), "grant" | "revoke" | "alter" | "comment" | "security")
        && kind_at(statement).is_some_and(|at| {
            let named = |kind: &[&str], names: &[&str]| {
                kind.iter().enumerate().all(|(i, w)| word(at + i, w))
                    && statement
                        .get(at + kind.len())
                        .and_then(name_of)
                        .is_some_and(|name| names.contains(&name.as_str()))
            };
            named(&["language"], SERVER_LANGUAGES)
                || named(&["procedural", "language"], SERVER_LANGUAGES)
                || named(&["access", "method"], SERVER_ACCESS_METHODS)
        })
    {
        return Some(format!("{} of an object of the server's own", first.to_ascii_uppercase()));
    }
    // An extension's members are its script's (pg_dump writes `ALTER EXTENSION … ADD` only to
    // upgrade a server).
    if first == "alter" && word(1, "extension") {
        return Some("ALTER EXTENSION statement".into());
    }
    if let Some(why) = evaluated_as_it_runs(statement) {
        return Some(why);
    }
    // A type's functions changed after it is made (`ALTER TYPE hstore SET (ANALYZE = …)`): the
    // server's C functions pointed at data they were not written for. pg_dump makes a type whole.
    if first == "alter" && word(1, "type") && (3..n).any(|at| word(at - 1, "set") && statement[at].is_punct('(')) {
        return Some("ALTER TYPE … SET (…) statement".into());
    }
    if names_temporary_schema(statement) {
        return Some("a name in the session's temporary schema".into());
    }
    if escape_string(statement) {
        return Some("an escape string (E'…'), which pg_dump does not write".into());
    }
    // An object of a schema is named with its schema (pg_dump qualifies every name, the script
    // runs with an empty `search_path`): a bare `pg_authid` or `lo_export` is `pg_catalog`'s, and
    // so is `db.pg_catalog.pg_authid`.
    if !schema_less(statement) && unqualified_object(statement) {
        return Some(format!("{} of an object named without its schema", first.to_ascii_uppercase()));
    }
    // `GRANT … ON SCHEMA crm, pg_catalog`, `IN SCHEMA crm, pg_catalog`: a system schema's own
    // name, every one of a list.
    let naming = matches!(first.as_str(), "grant" | "revoke" | "alter" | "comment" | "security");
    let schema_named = statement.iter().enumerate().any(|(at, token)| {
        let in_a_name =
            statement.get(at + 1).is_some_and(|t| t.is_punct('.')) || (at > 0 && statement[at - 1].is_punct('.'));
        !in_a_name && name_of(token).is_some_and(|name| system(&name))
    });
    if naming && schema_named {
        return Some(format!("{} of an object of the server's own", first.to_ascii_uppercase()));
    }
    if within_a_name(statement).any(|schema| system(&schema)) {
        return Some(format!("{} of an object of the server's own", first.to_ascii_uppercase()));
    }
    // An owner is changed alone, at the end (`ALTER … OWNER TO role`), as pg_dump writes it: what
    // a refresh runs as is read from there ([`vet`]).
    let owners = (1..n).filter(|at| word(*at - 1, "owner") && word(*at, "to")).count();
    if first == "alter" && owners > 0 && (owners > 1 || !(word(n - 3, "owner") && word(n - 2, "to"))) {
        return Some("an owner changed among other changes".into());
    }
    if unicode_escaped(statement) {
        return Some("a Unicode-escaped name or string".into());
    }
    if creates_routine(statement) || first == "select" {
        return None;
    }
    changing_call(statement).filter(|name| refused_into_empty_call(name)).map(|name| format!("a call of {name}"))
}

/// Whether a call of a function of [`CHANGING_FUNCTIONS`] is refused in a restore into an
/// empty database: not the new database's own sequences and large objects, which are the
/// snapshot's to change (a default of `'INV-' || nextval(…)`, the `lo` extension's
/// `lo_manage` trigger), nor its advisory locks and notifications; but the server's files.
pub fn refused_into_empty_call(name: &str) -> bool {
    let own = ["nextval", "setval", "currval", "lo_", "pg_advisory", "pg_try_advisory", "pg_notify"];
    !own.iter().any(|f| name.starts_with(f)) || name.starts_with("lo_import") || name.starts_with("lo_export")
}

/// What the server evaluates as a statement runs, before any catalog check could see code
/// hidden from these rules, and keeps no expression of: a column added with a default (a
/// non-volatile one is computed at once, for the rows there may be), a column's type changed
/// (`USING` runs for every row), a partition's bounds other than constants. pg_dump adds no
/// column (but in a binary upgrade), changes no column's type and writes bounds as literals.
fn evaluated_as_it_runs(statement: &[Token<'_>]) -> Option<String> {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    let n = statement.len();
    let alter_table = word(0, "alter") && (word(1, "table") || (word(1, "foreign") && word(2, "table")));
    // Bracket depth before each token.
    let depth: Vec<usize> = statement
        .iter()
        .scan(0usize, |depth, t| {
            let before = *depth;
            if t.is_punct('(') {
                *depth += 1;
            } else if t.is_punct(')') {
                *depth = depth.saturating_sub(1);
            }
            Some(before)
        })
        .collect();
    if alter_table
        && (2..n).any(|at| {
            // `ADD` the subcommand, not a column, schema, constraint or index called `add`
            // (`PRIMARY KEY (add)`, `add.t`, `ADD CONSTRAINT add`, `CLUSTER ON add`).
            word(at, "add")
                && depth[at] == 0
                && !statement[at - 1].is_punct('.')
                && !statement.get(at + 1).is_some_and(|t| t.is_punct('.'))
                && !["column", "constraint", "on", "index"].iter().any(|w| word(at - 1, w))
                && !["constraint", "generated"].iter().any(|w| word(at + 1, w))
        })
    {
        return Some("ALTER TABLE … ADD COLUMN statement".into());
    }
    // `ALTER [COLUMN] name [SET DATA] TYPE`, not a column called `type`.
    if alter_table
        && (3..n).any(|at| {
            word(at, "type")
                && ((word(at - 1, "data") && word(at - 2, "set"))
                    || (statement.get(at - 1).and_then(name_of).is_some()
                        && !word(at - 1, "column")
                        && (word(at - 2, "column") || word(at - 2, "alter"))))
        })
    {
        return Some("ALTER TABLE … ALTER COLUMN … TYPE statement".into());
    }
    if let Some(bound) = (1..n).find(|at| word(*at - 1, "for") && word(*at, "values"))
        && !literal_bounds(&statement[bound + 1..])
    {
        return Some("a partition's bounds that are not literals".into());
    }
    None
}

/// Whether the tokens after `FOR VALUES` start with bounds as pg_dump writes them, constants
/// only (`IN ('a', 'b')`, `FROM ('2026-01-01', MINVALUE) TO ('-1')`, `WITH (modulus 4,
/// remainder 0)`): the server evaluates a bound as the statement runs, before any catalog
/// check, and keeps only its value, so a call there (`(('/etc/hostname')::text).pg_read_file`,
/// a function in field notation) would leave nothing to find.
fn literal_bounds(tokens: &[Token<'_>]) -> bool {
    let constant_word = |t: &Token<'_>| {
        let word = t.text.to_ascii_lowercase();
        ["minvalue", "maxvalue", "null", "true", "false", "modulus", "remainder"].contains(&word.as_str())
            || (word.starts_with(|c: char| c.is_ascii_digit())
                && word.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e')))
    };
    let mut groups = if is_word(tokens.first(), "from") { 2 } else { 1 };
    if !["in", "from", "with"].iter().any(|w| is_word(tokens.first(), w)) {
        return false;
    }
    let (mut depth, mut at) = (0usize, 1);
    while groups > 0 {
        let Some(token) = tokens.get(at) else { return false };
        match token.kind {
            Kind::Punct if token.text == "(" => depth += 1,
            Kind::Punct if token.text == ")" && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    groups -= 1;
                    if groups == 1 && !is_word(tokens.get(at + 1), "to") {
                        return false;
                    }
                    at += usize::from(groups == 1);
                }
            }
            Kind::Punct if token.text == "," && depth == 1 => {}
            // A number's sign, point and exponent: `-1`, `1.5`, `1.5e+30`.
            Kind::Punct
                if depth == 1
                    && matches!(token.text, "-" | "+" | ".")
                    && tokens.get(at + 1).is_some_and(constant_word)
                    && (token.text != "." || tokens.get(at.wrapping_sub(1)).is_some_and(constant_word)) => {}
            Kind::Literal if depth == 1 && (token.text.starts_with('\'') || token.text.get(1..2) == Some("'")) => {}
            Kind::Word if depth == 1 && constant_word(token) => {}
            _ => return false,
        }
        at += 1;
    }
    true
}

/// The server's own procedural languages and access methods (no schema holds them).
const SERVER_LANGUAGES: &[&str] = &["internal", "c", "sql"];
const SERVER_ACCESS_METHODS: &[&str] = &["heap", "btree", "hash", "gist", "gin", "spgist", "brin"];

/// Whether a statement holds an escape string (`E'…'`): pg_dump writes standard strings
/// (`standard_conforming_strings = on`, which a script must keep), and an escape string goes
/// on over lines with its backslashes, where a lexer that missed it would read code as text.
fn escape_string(statement: &[Token<'_>]) -> bool {
    statement.iter().any(|t| t.kind == Kind::Literal && (t.text.starts_with("E'") || t.text.starts_with("e'")))
}

/// Whether a statement holds a Unicode-escaped name or string (`U&"\\0066"`), which this lexer
/// would not read as the server does: pg_dump writes names as they are.
fn unicode_escaped(statement: &[Token<'_>]) -> bool {
    statement.windows(3).any(|w| {
        is_word(Some(&w[0]), "u")
            && w[1].is_punct('&')
            && matches!(w[2].kind, Kind::QuotedIdent | Kind::Literal)
            && w[0].start + 1 == w[1].start
            && w[1].start + 1 == w[2].start
    })
}

/// Where a statement names the kind of object it acts on: after `ALTER`, or after the first
/// `ON` outside brackets (`GRANT … ON TABLE`, `COMMENT ON FUNCTION`); `None` when it has none.
fn kind_at(statement: &[Token<'_>]) -> Option<usize> {
    if is_word(statement.first(), "alter") {
        return Some(1);
    }
    outside_brackets(statement).find(|(_, token)| is_word(Some(token), "on")).map(|(at, _)| at + 1)
}

/// The kinds of object with no schema that `GRANT`/`REVOKE … ON`, `COMMENT`/`SECURITY LABEL
/// … ON` and `ALTER` name (the server's own are refused before).
const SCHEMA_LESS: [&str; 14] = [
    "schema",
    "extension",
    "language",
    "procedural",
    "large",
    "publication",
    "subscription",
    "event",
    "server",
    "foreign",
    "access",
    "cast",
    "transform",
    "default",
];

/// Whether a `GRANT`, `REVOKE`, `COMMENT`, `SECURITY LABEL` or `ALTER` statement is on an
/// object of a kind that has no schema (`ON SCHEMA crm`, `ALTER EXTENSION x`, `COMMENT ON
/// CAST (…)`, `ALTER DEFAULT PRIVILEGES`, `ALTER USER MAPPING`); any other statement counts as
/// one whose names are checked by other rules.
fn schema_less(statement: &[Token<'_>]) -> bool {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    let first = statement.first().map(|t| t.text.to_ascii_lowercase()).unwrap_or_default();
    if !matches!(first.as_str(), "alter" | "grant" | "revoke" | "comment" | "security") {
        return true;
    }
    let Some(kind_at) = kind_at(statement) else { return true };
    // `FOREIGN TABLE` has a schema; `FOREIGN DATA WRAPPER` and `FOREIGN SERVER` have none.
    if word(kind_at, "foreign") && word(kind_at + 1, "table") {
        return false;
    }
    // `ALL TABLES IN SCHEMA crm`.
    if word(kind_at, "all") {
        return true;
    }
    SCHEMA_LESS.iter().any(|w| word(kind_at, w)) || (word(kind_at, "user") && word(kind_at + 1, "mapping"))
}

/// The words between `ALTER` (or `COMMENT ON`) and the name of an object of a schema.
const OBJECT_KIND_WORDS: [&str; 28] = [
    "only",
    "table",
    "function",
    "procedure",
    "routine",
    "aggregate",
    "sequence",
    "view",
    "materialized",
    "index",
    "type",
    "domain",
    "collation",
    "conversion",
    "operator",
    "class",
    "family",
    "text",
    "search",
    "configuration",
    "dictionary",
    "parser",
    "template",
    "statistics",
    "foreign",
    "column",
    "if",
    "exists",
];

/// Whether a `GRANT`, `REVOKE`, `COMMENT`, `SECURITY LABEL` or `ALTER` statement on an object
/// of a schema names one without its schema: no name of it is qualified, or (a grant's list)
/// one of the objects granted on is not.
fn unqualified_object(statement: &[Token<'_>]) -> bool {
    let first = statement.first().map(|t| t.text.to_ascii_lowercase()).unwrap_or_default();
    if !matches!(first.as_str(), "grant" | "revoke" | "comment" | "security" | "alter") {
        return false;
    }
    if statement_schema(statement).is_none() {
        return true;
    }
    if first != "grant" && first != "revoke" {
        // The object's own name, not a qualified type among its arguments
        // (`ALTER FUNCTION lo_export(crm.t)`).
        let word = |at: usize, w: &str| is_word(statement.get(at), w);
        let Some(mut at) = kind_at(statement) else { return true };
        // `CONSTRAINT c ON crm.t`, `TRIGGER t ON crm.t`, `POLICY p ON …`, `RULE r ON …`: the table's.
        if ["constraint", "trigger", "policy", "rule"].iter().any(|w| word(at, w)) {
            match (at + 1..statement.len()).find(|place| word(*place, "on")) {
                Some(on) => at = on + 1,
                None => return true,
            }
        }
        while OBJECT_KIND_WORDS.iter().any(|w| word(at, w)) {
            at += 1;
        }
        return !statement.get(at + 1).is_some_and(|t| t.is_punct('.'));
    }
    // `GRANT … ON [TABLE | SEQUENCE | FUNCTION | …] a.x, b.y TO …`: each one qualified.
    let Some(mut at) = kind_at(statement) else { return false };
    let on = at - 1;
    let kinds = ["table", "sequence", "function", "procedure", "routine", "type", "domain"];
    if kinds.iter().any(|w| is_word(statement.get(at), w)) {
        at += 1;
    }
    let end = outside_brackets(statement)
        .find(|(place, token)| *place > on && (is_word(Some(token), "to") || is_word(Some(token), "from")))
        .map_or(statement.len(), |(place, _)| place);
    let mut starts = vec![at];
    let mut depth = 0i32;
    for (place, token) in statement.iter().enumerate().take(end).skip(at) {
        if token.is_punct('(') {
            depth += 1;
        } else if token.is_punct(')') {
            depth -= 1;
        } else if token.is_punct(',') && depth == 0 {
            starts.push(place + 1);
        }
    }
    starts.iter().any(|start| !statement.get(start + 1).is_some_and(|t| t.is_punct('.')))
}

/// The names inside a chain of three or more (`db.pg_catalog.pg_authid`: `pg_catalog`), where
/// a schema would stand after a database's name.
fn within_a_name<'s>(statement: &'s [Token<'_>]) -> impl Iterator<Item = String> + 's {
    statement.iter().enumerate().filter_map(move |(at, token)| {
        let inside = at >= 2
            && statement[at - 1].is_punct('.')
            && statement.get(at + 1).is_some_and(|t| t.is_punct('.'))
            && statement.get(at + 2).is_some_and(|t| name_of(t).is_some());
        inside.then(|| name_of(token)).flatten()
    })
}

/// Whether a statement names `pg_temp` (or `pg_temp_3`) as a schema: the session's temporary
/// schema, where the server looks for relations and types before `pg_catalog` even with an
/// empty `search_path` (a domain `pg_temp.trigger` would make `RETURNS trigger` mean it), and
/// whose objects vanish with the session. pg_dump names none.
fn names_temporary_schema(statement: &[Token<'_>]) -> bool {
    statement.iter().enumerate().any(|(at, token)| {
        statement.get(at + 1).is_some_and(|t| t.is_punct('.'))
            && name_of(token).is_some_and(|schema| schema == "pg_temp" || schema.starts_with("pg_temp_"))
    })
}

/// `SELECT pg_catalog.lo_create('16400')`: pg_dump's statement that makes a large object.
fn is_large_object_made(statement: &[Token<'_>]) -> bool {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    statement.len() == 7
        && word(0, "select")
        && word(1, "pg_catalog")
        && statement[2].is_punct('.')
        && word(3, "lo_create")
        && statement[4].is_punct('(')
        && statement[5].kind == Kind::Literal
        && literal_text(statement[5].text).is_some_and(|oid| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()))
        && statement[6].is_punct(')')
}

/// `ALTER LARGE OBJECT 16400 …`, `COMMENT ON LARGE OBJECT …`, `GRANT … ON LARGE OBJECT …`:
/// pg_dump's statements on a large object it made.
fn names_large_object(statement: &[Token<'_>]) -> bool {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    (1..statement.len())
        .any(|at| (word(at - 1, "alter") || word(at - 1, "on")) && word(at, "large") && word(at + 1, "object"))
}

/// The first function of [`CHANGING_FUNCTIONS`] a statement calls (unqualified names are
/// `pg_catalog`'s: the script runs with an empty `search_path`), but `nextval` in a column's
/// default, which loading does not evaluate.
fn changing_call(statement: &[Token<'_>]) -> Option<String> {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    for (at, token) in statement.iter().enumerate() {
        // `(expr).name` and `(expr)[1].name` call `name(expr)` (a function in field
        // notation): pg_dump writes it for a composite's fields only.
        let field_notation = at >= 2
            && statement[at - 1].is_punct('.')
            && (statement[at - 2].is_punct(')') || statement[at - 2].is_punct(']'));
        if !field_notation && !statement.get(at + 1).is_some_and(|t| t.is_punct('(')) {
            continue;
        }
        let Some(name) = name_of(token) else { continue };
        let qualified_elsewhere = at >= 2
            && statement[at - 1].is_punct('.')
            && statement.get(at - 2).and_then(name_of).is_some_and(|schema| schema != "pg_catalog");
        // A server's setting, which only a superuser may read (`config_file`,
        // `primary_conninfo` and its password), but an application's own (`app.tenant`, with a
        // dot) that a default may read.
        let server_setting = name == "current_setting"
            && (field_notation
                || !statement.get(at + 2).is_some_and(|t| {
                    t.kind == Kind::Literal && literal_text(t.text).is_some_and(|setting| setting.contains('.'))
                })
                // The setting is that literal alone, as text (`'{"x.": …}'::jsonb ->> 'x.'` is
                // another).
                || !setting_alone(&statement[(at + 3).min(statement.len())..]));
        let changing = CHANGING_FUNCTIONS.iter().any(|f| name.starts_with(f)) || server_setting;
        // `DEFAULT nextval('crm.seq'::regclass)`, its literal a name like any other.
        let a_default = name == "nextval"
            && (1..=2).any(|back| at >= back && word(at - back, "default"))
            && statement.get(at + 2).is_some_and(|t| {
                t.kind == Kind::Literal && literal_text(t.text).is_some() && literal_qualifier(t.text).is_some()
            });
        if changing && !qualified_elsewhere && !a_default {
            return Some(name);
        }
    }
    None
}

/// Whether what follows `current_setting('literal'` ends its argument: `)` or `,`, after at
/// most a cast to text (`'app.tenant'::text)`, as pg_dump writes it).
fn setting_alone(rest: &[Token<'_>]) -> bool {
    let mut at = 0;
    while rest.get(at).is_some_and(|t| t.kind == Kind::Punct && t.text.chars().all(|c| c == ':')) {
        at += 1;
    }
    if at > 0 {
        if !is_word(rest.get(at), "text") {
            return false;
        }
        at += 1;
    }
    rest.get(at).is_some_and(|t| t.is_punct(')') || t.is_punct(','))
}

/// What a restore into an empty database finds in the snapshot's schema script ([`vet`]).
#[derive(Debug, Default)]
pub struct Vetting {
    /// Statements pg_dump does not write ([`refused_into_empty`]), each said with its start.
    pub refused: Vec<String>,
    /// Code of the snapshot's own the restore may run ([`own_code`]: routines, operators,
    /// aggregates, operator classes and families, but trigger functions; triggers made before
    /// the rows load), languages it makes, and extensions not known to keep to the database
    /// ([`CONTAINED_EXTENSIONS`]), event triggers.
    pub runs_code: BTreeSet<String>,
    /// The materialized views the script refreshes (`schema.name`), with the owner the script
    /// gave each by then (`ALTER MATERIALIZED VIEW … OWNER TO`; `None`: the restoring role), as
    /// whom its query runs.
    pub refreshed: Vec<(String, Option<String>)>,
    /// The owner the script gives each object at its end, by `schema.name` (what a refresh
    /// after the script runs as).
    pub owners: HashMap<String, String>,
    /// The views the script makes (`schema.name`): a view's query runs with its owner's rights,
    /// also for a materialized view that reads it.
    pub views: BTreeSet<String>,
}

/// Encodings a client may use but a database may not: bytes of a character may look like
/// ASCII's quotes and semicolons there, read otherwise than the lexer reads them.
const CLIENT_ONLY_ENCODINGS: [&str; 12] = [
    "sjis",
    "shift_jis",
    "shift_jis_2004",
    "mskanji",
    "win932",
    "big5",
    "win950",
    "gbk",
    "win936",
    "uhc",
    "win949",
    "gb18030",
];

/// `SET client_encoding = '…'` to a database's encoding (pg_dump writes the source's), which
/// reads the script's bytes as the lexer does: every byte outside ASCII a letter.
fn is_database_encoding(statement: &[Token<'_>]) -> bool {
    let word = |at: usize, w: &str| is_word(statement.get(at), w);
    statement.len() == 4
        && word(0, "set")
        && word(1, "client_encoding")
        && (word(2, "to") || statement[2].is_punct('='))
        && match statement[3].kind {
            Kind::Literal => literal_text(statement[3].text),
            Kind::Word => Some(statement[3].text.to_string()),
            _ => None,
        }
        .is_some_and(|value| {
            let value = value.to_ascii_lowercase().replace('-', "_");
            value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !CLIENT_ONLY_ENCODINGS.contains(&value.as_str())
        })
}

/// Checks the schema scripts of a restore into an empty database, statement by statement as
/// [`statements`] cuts them (and as the restore sends them, each alone).
pub fn vet(pre_data: &str, post_data: &str) -> Vetting {
    /// Statements said at most, and how much of each.
    const SAID: usize = 10;
    const START: usize = 60;
    let mut vetting = Vetting::default();
    let mut refused = Vec::new();
    for (text, pre) in [(pre_data, true), (post_data, false)] {
        let tokens = significant(text);
        for statement in statements(&tokens) {
            if setting(statement).is_some() || is_database_encoding(statement) {
                continue;
            }
            if let Some(why) = refused_into_empty(statement) {
                let (first, last) = (&statement[0], &statement[statement.len() - 1]);
                let whole = &text[first.start..last.start + last.text.len()];
                let start: String = whole.chars().take(START).collect();
                let more = if start.len() < whole.len() { "…" } else { "" };
                refused.push(format!("{why} ({}{more})", crate::error::printable(&start)));
            }
            match own_code(statement) {
                Some(OwnCode::Routine(name)) => {
                    vetting.runs_code.insert(name);
                }
                Some(OwnCode::Trigger(name)) if pre => {
                    vetting.runs_code.insert(format!("trigger {name}"));
                }
                _ => {}
            }
            let word = |at: usize, w: &str| is_word(statement.get(at), w);
            let kind = created_at(statement);
            if word(0, "create") && word(kind, "extension") {
                let at = if word(kind + 1, "if") { kind + 4 } else { kind + 1 };
                let name = statement.get(at).and_then(name_of).unwrap_or_default();
                // `CASCADE` makes the extensions it requires, unnamed.
                let cascade = statement.iter().any(|t| is_word(Some(t), "cascade"));
                if !CONTAINED_EXTENSIONS.contains(&name.as_str()) || cascade {
                    vetting.runs_code.insert(format!("extension {name}"));
                }
            }
            // An event trigger fires for the restore's own statements that follow it.
            if word(0, "create") && word(kind, "event") && word(kind + 1, "trigger") {
                let name = statement.get(kind + 2).and_then(name_of).unwrap_or_default();
                vetting.runs_code.insert(format!("event trigger {name}"));
            }
            let view = |at: usize| qualified_at(statement, at).map(|n| format!("{}.{}", n.schema, n.name));
            if word(0, "refresh") && word(1, "materialized") && word(2, "view") {
                let at = if word(3, "concurrently") { 4 } else { 3 };
                if let Some(name) = view(at) {
                    let owner = vetting.owners.get(&name).cloned();
                    vetting.refreshed.push((name, owner));
                }
            }
            // A rule `ON SELECT` makes its table a view.
            let on_select =
                (2..statement.len()).find(|at| word(at - 2, "on") && word(at - 1, "select") && word(*at, "to"));
            if word(0, "create")
                && word(kind, "rule")
                && let Some(name) = on_select.and_then(|at| view(at + 1))
            {
                vetting.views.insert(name);
            }
            // A view made (again) is the restoring role's until an `OWNER TO`.
            let mut made_at = kind;
            while ["temp", "temporary", "recursive", "materialized"].iter().any(|w| word(made_at, w)) {
                made_at += 1;
            }
            if word(0, "create")
                && word(made_at, "view")
                && let Some(name) = view(made_at + 1)
            {
                vetting.owners.remove(&name);
                if !word(kind, "materialized") {
                    vetting.views.insert(name);
                }
            }
            // `ALTER MATERIALIZED VIEW [IF EXISTS] s.v OWNER TO role` (`ALTER TABLE` works too);
            // `CURRENT_USER`, `SESSION_USER`, `CURRENT_ROLE` are the restoring role.
            let owner_at = (1..statement.len()).find(|at| word(*at - 1, "owner") && word(*at, "to"));
            if word(0, "alter")
                && let Some(at) = owner_at
                && at + 2 == statement.len()
                && let Some(name) = (1..at).find(|at| qualified_at(statement, *at).is_some()).and_then(view)
            {
                let owner = statement.get(at + 1).filter(|t| t.kind == Kind::QuotedIdent || t.kind == Kind::Word);
                let restoring = ["current_user", "session_user", "current_role"].iter().any(|w| word(at + 1, w));
                match owner.and_then(name_of) {
                    Some(owner) if !restoring => vetting.owners.insert(name, owner),
                    _ => vetting.owners.remove(&name),
                };
            }
            // A subscription holds a connection the snapshot chose, in the server's shared catalog.
            if word(0, "create") && word(kind, "subscription") {
                let name = statement.get(kind + 1).and_then(name_of).unwrap_or_default();
                vetting.runs_code.insert(format!("subscription {name}"));
            }
            // `CREATE [OR REPLACE] [TRUSTED] [PROCEDURAL] LANGUAGE name`.
            let mut at = kind;
            while word(at, "trusted") || word(at, "procedural") {
                at += 1;
            }
            if word(0, "create") && word(at, "language") {
                let name = statement.get(at + 1).and_then(name_of).unwrap_or_default();
                vetting.runs_code.insert(format!("language {name}"));
            }
        }
    }
    vetting.refused = crate::error::a_few(refused, SAID, |more| format!("and {more} more"));
    vetting
}

fn is_operator(token: &Token<'_>) -> bool {
    token.kind == Kind::Punct && token.text.chars().all(|c| OPERATOR_CHARS.contains(c))
}

/// The `schema.name` or `schema.operator` (`crm.###`) at `at`, if there is one.
fn qualified_or_operator(tokens: &[Token<'_>], at: usize) -> Option<TableName> {
    if at > 0 && tokens[at - 1].is_punct('.') {
        return None;
    }
    let schema = name_of(tokens.get(at)?)?;
    if !tokens.get(at + 1)?.is_punct('.') {
        return None;
    }
    let next = tokens.get(at + 2)?;
    let name = match name_of(next) {
        Some(name) => name,
        None if is_operator(next) => {
            // The lexer gives an operator's characters one by one: those that touch.
            let mut name = next.text.to_string();
            for token in &tokens[at + 3..] {
                if !is_operator(token) || token.start != next.start + name.len() {
                    break;
                }
                name.push_str(token.text);
            }
            name
        }
        None => return None,
    };
    Some(TableName { schema, name })
}

/// The schema and name of a literal that is a qualified name (`'app.seq'`, `'"App".seq'`: what
/// `::regclass` and `nextval` read), if it is one.
fn literal_qualifier(literal: &str) -> Option<(String, String)> {
    let text = literal_text(literal.strip_prefix(['E', 'e']).unwrap_or(literal))?;
    let tokens: Vec<Token<'_>> = Lexer::new(&text).collect();
    if tokens.len() >= 3 && tokens[1].is_punct('.') {
        Some((name_of(&tokens[0])?, name_of(&tokens[2]).unwrap_or_default()))
    } else {
        None
    }
}

/// What follows `CREATE`/`ALTER` (`[OR REPLACE]`) in a statement on an object of the whole
/// database or server.
const GLOBAL: [&str; 17] = [
    "cast",
    "transform",
    "access",
    "trusted",
    "procedural",
    "extension",
    "publication",
    "subscription",
    "event",
    "role",
    "user",
    "group",
    "database",
    "tablespace",
    "server",
    "foreign",
    "language",
];

/// A name token's value: bare (folded to lower case) or quoted.
fn name_of(token: &Token<'_>) -> Option<String> {
    match token.kind {
        Kind::Word if token.text.starts_with(script::is_identifier_start) => Some(token.text.to_ascii_lowercase()),
        Kind::QuotedIdent => Some(token.text[1..token.text.len() - 1].replace("\"\"", "\"")),
        _ => None,
    }
}

fn is_word(token: Option<&Token<'_>>, word: &str) -> bool {
    token.is_some_and(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case(word))
}

/// The `schema.name` at `at` (its first two parts), if there is one.
fn qualified_at(tokens: &[Token<'_>], at: usize) -> Option<TableName> {
    let schema = name_of(tokens.get(at)?)?;
    if !tokens.get(at + 1)?.is_punct('.') {
        return None;
    }
    let name = name_of(tokens.get(at + 2)?)?;
    Some(TableName { schema, name })
}

/// The first `schema.name` at or after `at`, skipping the given optional words.
fn qualified_after(tokens: &[Token<'_>], mut at: usize, optional: &[&str]) -> Option<TableName> {
    while optional.iter().any(|word| is_word(tokens.get(at), word)) {
        at += 1;
    }
    qualified_at(tokens, at)
}

/// The parents a `CREATE TABLE` statement names in its `INHERITS (…)` clause, outside the
/// column list.
fn inherited(statement: &[Token<'_>]) -> Vec<TableName> {
    let mut depth = 0i32;
    for (at, token) in statement.iter().enumerate() {
        if token.is_punct(';') {
            break;
        } else if token.is_punct('(') {
            depth += 1;
        } else if token.is_punct(')') {
            depth -= 1;
        } else if depth == 0
            && is_word(Some(token), "inherits")
            && statement.get(at + 1).is_some_and(|t| t.is_punct('('))
        {
            let mut parents = Vec::new();
            let mut next = at + 2;
            while let Some(parent) = qualified_at(statement, next) {
                parents.push(parent);
                if !statement.get(next + 3).is_some_and(|t| t.is_punct(',')) {
                    break;
                }
                next += 4;
            }
            return parents;
        }
    }
    Vec::new()
}

/// The longest name PostgreSQL keeps (NAMEDATALEN − 1).
const MAX_NAME_BYTES: usize = 63;

/// The tokens of `sql` that mean something (no spaces, no comments).
fn significant(sql: &str) -> Vec<Token<'_>> {
    Lexer::new(sql).filter(|t| !matches!(t.kind, Kind::Space | Kind::LineComment | Kind::BlockComment)).collect()
}

/// Where the column list of a `CREATE [UNLOGGED | FOREIGN …] TABLE name (…)` statement opens and
/// closes (places in `statement`); `None` for any other statement, a partition (`PARTITION OF`)
/// or a typed table (`OF type`).
fn column_list(statement: &[Token<'_>]) -> Option<(usize, usize)> {
    if !is_word(statement.first(), "create") {
        return None;
    }
    let mut at = created_at(statement);
    while ["unlogged", "temporary", "temp", "global", "local", "foreign"].iter().any(|w| is_word(statement.get(at), w))
    {
        at += 1;
    }
    if !is_word(statement.get(at), "table") {
        return None;
    }
    at += 1;
    if is_word(statement.get(at), "if") {
        at += 3;
    }
    at += if statement.get(at + 1).is_some_and(|t| t.is_punct('.')) { 3 } else { 1 };
    if !statement.get(at)?.is_punct('(') {
        return None;
    }
    Some((at, closing_bracket(statement, at)?))
}

/// The elements of the list between the brackets at `open` and `close`: the places of each
/// one's first token and of the `,` or `)` after it.
fn list_elements(statement: &[Token<'_>], open: usize, close: usize) -> Vec<(usize, usize)> {
    let mut elements = Vec::new();
    let (mut start, mut depth) = (open + 1, 0i32);
    for (at, token) in statement.iter().enumerate().take(close).skip(open + 1) {
        depth += nesting(token);
        if depth == 0 && token.is_punct(',') {
            elements.push((start, at));
            start = at + 1;
        }
    }
    if start < close {
        elements.push((start, close));
    }
    elements
}

/// How a token changes the depth of brackets, square ones too (`ARRAY[a, b]`).
fn nesting(token: &Token<'_>) -> i32 {
    if token.is_punct('(') || token.is_punct('[') {
        1
    } else if token.is_punct(')') || token.is_punct(']') {
        -1
    } else {
        0
    }
}

/// The places of the tokens of `tokens` outside any bracket, square ones too.
fn outside_any_bracket(tokens: &[Token<'_>]) -> Vec<usize> {
    let mut depth = 0i32;
    let mut places = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        let change = nesting(token);
        if change == 0 && depth == 0 {
            places.push(at);
        }
        depth += change;
    }
    places
}

/// Words that begin a table constraint in a column list, not a column.
const TABLE_CONSTRAINTS: [&str; 8] =
    ["constraint", "check", "unique", "primary", "foreign", "exclude", "like", "default"];

/// Whether `element` (a column list's element) defines a column: a name, then its type.
fn is_column(element: &[Token<'_>]) -> bool {
    element.len() > 1
        && name_of(&element[0]).is_some()
        && !TABLE_CONSTRAINTS.iter().any(|word| is_word(element.first(), word))
}

/// The byte places where a type is written in `tokens`: after a column's name in a
/// `CREATE TABLE` list, or after `::`. A type there may carry a modifier (`public.vector(1536)`,
/// `public.geometry(Point, 4326)`), which is no call.
fn type_places(tokens: &[Token<'_>]) -> HashSet<usize> {
    let mut places = HashSet::new();
    for statement in statements(tokens) {
        if let Some((open, close)) = column_list(statement) {
            for (start, end) in list_elements(statement, open, close) {
                if is_column(&statement[start..end]) {
                    places.insert(statement[start + 1].start);
                }
            }
        }
    }
    for at in 2..tokens.len() {
        if is_cast(&tokens[..at]) {
            places.insert(tokens[at].start);
        }
    }
    places
}

/// Whether `tokens` end with `::`, written as one (the server reads `: :` as two colons).
fn is_cast(tokens: &[Token<'_>]) -> bool {
    match tokens {
        [.., first, second] => first.is_punct(':') && second.is_punct(':') && second.start == first.start + 1,
        _ => false,
    }
}

/// Whether the bracket at `open` holds a type modifier's list: words and numbers separated by
/// commas, and nothing else.
fn is_type_modifier(tokens: &[Token<'_>], open: usize) -> bool {
    if !tokens.get(open).is_some_and(|t| t.is_punct('(')) {
        return false;
    }
    let Some(close) = closing_bracket(tokens, open) else { return false };
    close > open + 1
        && tokens[open + 1..close]
            .iter()
            .enumerate()
            .all(|(n, t)| if n % 2 == 0 { t.kind == Kind::Word } else { t.is_punct(',') })
}

/// Whether the qualified name at `at` (`schema . name`) is a call: a bracket follows that is no
/// type's modifier where a type is written (`type_place`), or it is an option's value
/// (`SUBTYPE_DIFF = public.f`, `FUNCTION = …`). Never a type that runs no code.
fn is_call(tokens: &[Token<'_>], at: usize, type_place: bool) -> bool {
    (tokens.get(at + 3).is_some_and(|t| t.is_punct('(')) && !(type_place && is_type_modifier(tokens, at + 3)))
        || at.checked_sub(1).and_then(|before| tokens.get(before)).is_some_and(|t| t.text == "=")
}

/// Defaults left out of a side table: each column's name, with the live objects its default named.
type DefaultsLeftOut = Vec<(String, Vec<String>)>;

/// `sql` (one entry) with the `DEFAULT` clauses of its table's columns that name an object of
/// a live schema (`is_live`) other than `inert` ones taken out, and what each named: beside
/// live data a side table is made without a default that would call a live function
/// (`DEFAULT public.uuid_generate_v4()`), since COPY gives every column and the side table is
/// there to be read. `None` when it has none.
fn without_live_defaults(
    sql: &str,
    is_live: impl Fn(&str) -> bool,
    inert: &BTreeSet<(String, String)>,
) -> Option<(String, DefaultsLeftOut)> {
    let tokens = significant(sql);
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut said = Vec::new();
    for statement in statements(&tokens) {
        let Some((open, close)) = column_list(statement) else { continue };
        for (start, end) in list_elements(statement, open, close) {
            let element = &statement[start..end];
            if !is_column(element) {
                continue;
            }
            let outside = outside_any_bracket(element);
            // After the column's name and type.
            let Some(default) = outside.iter().copied().find(|&at| at >= 2 && is_word(element.get(at), "default"))
            else {
                continue;
            };
            // The expression ends where the column's next clause starts.
            let stops = ["constraint", "check", "references", "unique", "primary", "generated", "collate"];
            let stop = outside
                .iter()
                .copied()
                .filter(|&at| at > default + 1)
                .find(|&at| {
                    stops.iter().any(|word| is_word(element.get(at), word))
                        || (is_word(element.get(at), "not") && is_word(element.get(at + 1), "null"))
                        || is_word(element.get(at), "null")
                })
                .unwrap_or(element.len());
            let expression = &element[default + 1..stop];
            if expression.is_empty() {
                continue;
            }
            let mut named = Vec::new();
            for at in 0..expression.len() {
                if at > 0 && expression[at - 1].is_punct('.') {
                    continue;
                }
                let Some(qualified) = qualified_at(expression, at) else { continue };
                let name = if is_call(expression, at, is_cast(&expression[..at])) {
                    format!("{}()", qualified.name)
                } else {
                    qualified.name.clone()
                };
                if is_live(&qualified.schema) && !inert.contains(&(qualified.schema.clone(), name.clone())) {
                    named.push(format!("{}.{name}", qualified.schema));
                }
            }
            let operator = expression.iter().any(|t| is_word(Some(t), "operator"));
            if named.is_empty() && !operator {
                continue;
            }
            if named.is_empty() {
                named.push("an operator".into());
            }
            // From the end of the word before `DEFAULT` to the end of the expression.
            let (before, last) = (&element[default - 1], &expression[expression.len().max(1) - 1]);
            cuts.push((before.start + before.text.len(), last.start + last.text.len()));
            said.push((name_of(&element[0]).unwrap_or_default(), named));
        }
    }
    if cuts.is_empty() {
        return None;
    }
    let mut text = sql.to_string();
    for (from, to) in cuts.into_iter().rev() {
        // A space, so that what was on either side never joins into one token.
        text.replace_range(from..to, " ");
    }
    Some((text, said))
}

fn facts(sql: &str) -> Facts {
    let tokens = significant(sql);
    let mut facts = Facts::default();
    for statement in statements(&tokens) {
        facts.large_object |= is_large_object_made(statement) || names_large_object(statement);
        if setting(statement).is_none() {
            facts.statements.push(statement_schema(statement));
            facts.refused.extend(refused_beside_live(statement));
            facts.inside.extend(within_a_name(statement));
            match own_code(statement) {
                Some(OwnCode::Trigger(name)) => facts.triggers.push(name),
                Some(OwnCode::Routine(name)) => facts.own_code.push(name),
                None => {}
            }
        }
    }
    // PostgreSQL cuts a longer name to 63 bytes: `<63 s>xyz.f` is the schema of 63 s's, which
    // these rules would not read as the live schema it is.
    if let Some(long) = tokens.iter().filter_map(name_of).find(|name| name.len() > MAX_NAME_BYTES) {
        let start: String = long.chars().take(20).collect();
        facts.refused.push(format!("a name longer than {MAX_NAME_BYTES} bytes ({}…)", crate::error::printable(&start)));
    }
    let types = type_places(&tokens);
    for (at, token) in tokens.iter().enumerate() {
        if tokens.get(at + 1).is_some_and(|t| t.is_punct('.'))
            && let Some(schema) = name_of(token)
        {
            // An operator's name as written (`OPERATOR(public.->)`, one punctuation token a
            // character): no type has it.
            let mut name = match tokens.get(at + 2).and_then(name_of) {
                Some(name) => name,
                None => tokens[(at + 2).min(tokens.len())..]
                    .iter()
                    .take_while(|t| t.kind == Kind::Punct && !t.is_punct(')') && !t.is_punct('('))
                    .map(|t| t.text)
                    .collect(),
            };
            if is_call(&tokens, at, types.contains(&token.start)) {
                name.push_str("()");
            }
            facts.qualifiers.insert((schema, name));
        }
        if token.kind == Kind::Literal
            && let Some(qualified) = literal_qualifier(token.text)
        {
            facts.qualifiers.insert(qualified);
        }
    }
    for at in 0..tokens.len() {
        let reaching = (REACHING.iter().any(|w| is_word(tokens.get(at), w))
            && (!is_word(tokens.get(at), "of") || is_word(tokens.get(at.wrapping_sub(1)), "partition")))
            || (is_word(tokens.get(at), "partition") && is_word(tokens.get(at.wrapping_sub(1)), "attach"));
        if !reaching {
            continue;
        }
        // The names that follow, up to the end of a list: `INHERITS (a.x, b.y)`,
        // `COMMUTATOR = OPERATOR(app.###)`, `REFERENCES app.t(id)`.
        let mut depth = 0i32;
        for next in at + 1..(at + 64).min(tokens.len()) {
            let token = &tokens[next];
            if token.is_punct('(') {
                depth += 1;
            } else if token.is_punct(')') {
                depth -= 1;
                if depth <= 0 {
                    break;
                }
            } else if (token.is_punct(',') && depth == 0) || token.is_punct(';') {
                break;
            }
            let qualified =
                tokens.get(next + 1).is_some_and(|t| t.is_punct('.')) && !(next > 0 && tokens[next - 1].is_punct('.'));
            if qualified && let Some(schema) = name_of(token) {
                facts.reaches.push(schema);
                if depth == 0 {
                    break;
                }
            }
        }
    }
    let word = |at: usize, w: &str| is_word(tokens.get(at), w);
    for at in 0..tokens.len() {
        if let Some(name) = qualified_at(&tokens, at)
            && !(at > 0 && tokens[at - 1].is_punct('.'))
        {
            facts.names.insert(name);
        }
        if word(at, "schema") && (at == 0 || !tokens[at - 1].is_punct('.')) {
            let keyword_before = at > 0 && ["create", "on", "in", "alter", "with"].iter().any(|w| word(at - 1, w));
            let exists = word(at + 1, "if") && word(at + 2, "not") && word(at + 3, "exists");
            let name_at = if exists { at + 4 } else { at + 1 };
            if keyword_before
                && facts.schema.is_none()
                && let Some(name) = tokens.get(name_at).and_then(name_of)
                && !tokens.get(name_at + 1).is_some_and(|t| t.is_punct('.'))
            {
                facts.schema = Some(name);
            }
        }
        if !word(at, "create") && !word(at, "alter") {
            continue;
        }
        let statement_start = at == 0 || tokens[at - 1].is_punct(';');
        if !statement_start {
            continue;
        }
        let object = if word(at + 1, "or") && word(at + 2, "replace") { at + 3 } else { at + 1 };
        // `ALTER FOREIGN TABLE` is a table's; `CREATE FOREIGN TABLE` too.
        let foreign_table = word(object, "foreign") && word(object + 1, "table");
        facts.global |= GLOBAL.iter().any(|w| word(object, w)) && !foreign_table;
        if word(at, "create") {
            let mut next = at + 1;
            if word(next, "or") && word(next + 1, "replace") {
                next += 2;
            }
            while ["unlogged", "temporary", "temp", "recursive", "materialized", "foreign", "unique"]
                .iter()
                .any(|w| word(next, w))
            {
                next += 1;
            }
            let relation = if word(next, "table") {
                Some(Relation::Table)
            } else if word(next, "view") {
                Some(Relation::View)
            } else if word(next, "sequence") {
                Some(Relation::Sequence)
            } else {
                None
            };
            if let Some(relation) = relation
                && facts.creates.is_none()
                && let Some(name) = qualified_after(&tokens, next + 1, &["if", "not", "exists"])
            {
                if relation == Relation::Table {
                    facts.inherits = inherited(&tokens[next..]);
                }
                facts.creates = Some((name, relation));
            }
            if word(next, "index") && facts.index.is_none() {
                // CREATE [UNIQUE] INDEX [CONCURRENTLY] name ON [ONLY] schema.table
                let mut name_at = next + 1;
                if word(name_at, "concurrently") {
                    name_at += 1;
                }
                if let Some(index) = tokens.get(name_at).and_then(name_of)
                    && word(name_at + 1, "on")
                    && let Some(table) = qualified_after(&tokens, name_at + 2, &["only"])
                {
                    facts.index = Some((TableName { schema: table.schema.clone(), name: index }, table));
                }
            }
            if word(next, "extension") {
                facts.extension = true;
            }
            continue;
        }
        // ALTER …
        if word(at + 1, "table") {
            let Some(table) = qualified_after(&tokens, at + 2, &["if", "exists", "only"]) else { continue };
            facts.altered.get_or_insert_with(|| table.clone());
            let rest = &tokens[at + 2..];
            let end = rest.iter().position(|t| t.is_punct(';')).unwrap_or(rest.len());
            let statement = &rest[..end];
            let has = |w: &str| statement.iter().any(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case(w));
            for (i, token) in statement.iter().enumerate() {
                let here = |w: &str| token.kind == Kind::Word && token.text.eq_ignore_ascii_case(w);
                if here("partition")
                    && i > 0
                    && is_word(statement.get(i - 1), "attach")
                    && let Some(child) = qualified_at(statement, i + 1)
                {
                    facts.attach = Some((table.clone(), child));
                }
                if here("sequence")
                    && is_word(statement.get(i + 1), "name")
                    && let Some(sequence) = qualified_at(statement, i + 2)
                {
                    // An identity column's sequence: made by this statement.
                    facts.creates.get_or_insert((sequence.clone(), Relation::Sequence));
                    facts.owned = Some((sequence, table.clone()));
                }
                if here("constraint")
                    && i > 0
                    && is_word(statement.get(i - 1), "add")
                    && let Some(name) = statement.get(i + 1).and_then(name_of)
                {
                    let indexed = is_word(statement.get(i + 2), "primary")
                        || is_word(statement.get(i + 2), "unique")
                        || is_word(statement.get(i + 2), "exclude");
                    if indexed {
                        facts.index = Some((TableName { schema: table.schema.clone(), name }, table.clone()));
                    }
                }
            }
            facts.foreign_key |= has("foreign") && has("references");
        } else if word(at + 1, "sequence")
            && let Some(sequence) = qualified_after(&tokens, at + 2, &["if", "exists"])
        {
            let owned_by =
                tokens[at..].iter().position(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case("owned"));
            if let Some(owned) = owned_by.map(|p| at + p)
                && word(owned + 1, "by")
                && let Some(table) = qualified_at(&tokens, owned + 2)
            {
                facts.owned = Some((sequence, table));
            }
        }
    }
    facts
}

/// Chooses the entries of `pre_data` and `post_data` (each through
/// [`super::executable_sql`]) that make the part `spec` asks for, and renames its schemas.
pub fn select(pre_data: &str, post_data: &str, spec: &Spec<'_>) -> Part {
    let pre = script::parse(pre_data);
    let post = script::parse(post_data);
    let live = |schema: &str| {
        schema != "pg_catalog"
            && renamed(spec.schema_map, schema).is_none()
            && spec.live_schemas.iter().any(|live| live == schema)
    };
    // Each entry's text, and the defaults left out of it: beside live data, a side table is made
    // without the defaults that name live objects.
    let texts: Vec<(std::borrow::Cow<'_, str>, DefaultsLeftOut)> = pre
        .entries
        .iter()
        .map(|entry| (entry, true))
        .chain(post.entries.iter().map(|entry| (entry, false)))
        .map(|(entry, pre_data)| {
            let changed = (spec.beside_live_data && pre_data && entry.kind == "TABLE")
                .then(|| without_live_defaults(entry.sql, live, spec.live_inert))
                .flatten();
            changed.map_or((entry.sql.into(), Vec::new()), |(text, said)| (text.into(), said))
        })
        .collect();
    let entries: Vec<Facts> = texts.iter().map(|(text, _)| facts(text)).collect();

    let mut kinds: HashMap<&TableName, Relation> = HashMap::new();
    let mut creating: HashMap<&TableName, &Facts> = HashMap::new();
    let mut indexes: HashMap<&TableName, &TableName> = HashMap::new();
    let mut children: HashMap<&TableName, Vec<&TableName>> = HashMap::new();
    let mut parents: HashMap<&TableName, Vec<&TableName>> = HashMap::new();
    let mut owner: HashMap<&TableName, &TableName> = HashMap::new();
    for facts in &entries {
        if let Some((name, relation)) = &facts.creates {
            kinds.insert(name, *relation);
            creating.insert(name, facts);
        }
        if let Some((index, table)) = &facts.index {
            indexes.insert(index, table);
        }
        if let Some((parent, child)) = &facts.attach {
            children.entry(parent).or_default().push(child);
            parents.entry(child).or_default().push(parent);
        }
        if let Some((sequence, table)) = &facts.owned {
            owner.insert(sequence, table);
        }
    }
    let is = |name: &TableName, relation| kinds.get(name) == Some(&relation);

    // Tables asked for, with the partitions of a partitioned one.
    let mut tables: BTreeSet<&TableName> =
        kinds.keys().copied().filter(|n| is(n, Relation::Table) && (spec.wanted)(n)).collect();
    let mut todo: Vec<&TableName> = tables.iter().copied().collect();
    while let Some(table) = todo.pop() {
        for child in children.get(table).into_iter().flatten() {
            if tables.insert(child) {
                todo.push(child);
            }
        }
    }
    // What a kept table cannot be created without: its parents.
    let mut todo: Vec<&TableName> = tables.iter().copied().collect();
    while let Some(table) = todo.pop() {
        let inherited = creating.get(table).map(|facts| facts.names.iter().filter(|n| is(n, Relation::Table)));
        for parent in parents.get(table).into_iter().flatten().copied().chain(inherited.into_iter().flatten()) {
            if parent != table && tables.insert(parent) {
                todo.push(parent);
            }
        }
    }
    let mut kept: HashSet<&TableName> = tables.iter().copied().collect();
    let in_scope = |schema: Option<&str>| {
        !spec.beside_live_data || schema.is_some_and(|schema| renamed(spec.schema_map, schema).is_some())
    };
    for (name, relation) in &kinds {
        if *relation == Relation::Sequence {
            let keep = match owner.get(name) {
                Some(table) => tables.contains(table),
                None => in_scope(Some(&name.schema)),
            };
            if keep {
                kept.insert(name);
            }
        }
    }
    // Views asked for whose relations are all kept (a view on a view: until nothing changes).
    let mut left_out = Vec::new();
    let views: Vec<&TableName> = kinds.keys().copied().filter(|n| is(n, Relation::View) && (spec.wanted)(n)).collect();
    loop {
        let before = kept.len();
        for view in &views {
            let names = &creating[view].names;
            if !kept.contains(view) && names.iter().all(|n| n == *view || !kinds.contains_key(n) || kept.contains(n)) {
                kept.insert(view);
            }
        }
        if kept.len() == before {
            break;
        }
    }
    for view in views.iter().filter(|view| !kept.contains(*view)) {
        left_out.push(format!("view {}.{}: it names a relation left out", view.schema, view.name));
    }

    let known = |name: &TableName| kinds.contains_key(name) || indexes.contains_key(name);
    let kept_name = |name: &TableName| match indexes.get(name) {
        Some(table) => kept.contains(*table),
        None => kept.contains(name),
    };
    let live = |schema: &String| live(schema);
    // The live objects an entry names beside live data, but those naming which is inert, as
    // said (printable).
    let live_named = |facts: &Facts| -> Vec<String> {
        let named = facts.qualifiers.iter().filter(|(schema, _)| live(schema));
        let named = named.filter(|qualified| !spec.live_inert.contains(*qualified));
        named.map(|(schema, name)| crate::error::printable(&format!("{schema}.{name}"))).collect()
    };
    let keep = |kind: &str, facts: &Facts, pre_data: bool| -> bool {
        // Made, they would be empty: their data comes only with the whole snapshot.
        if facts.large_object {
            return false;
        }
        // Beside live data, an entry runs only if every statement acts on an object of a
        // renamed schema, decided from the statement, never the header (a name or an owner can
        // make a header say any schema): `CREATE FUNCTION app.f(c crm.t)` or `ALTER DOMAIN
        // app.d …` would make or change a live object. A database's or server's object (a
        // publication that would gain the side tables, say) is never made.
        // `db.crm.contacts` is the live `crm.contacts` whatever `crm` is renamed to.
        let schema_inside =
            |name: &String| name == "pg_catalog" || renamed(spec.schema_map, name).is_some() || live(name);
        if spec.beside_live_data
            && (facts.global
                || !facts.refused.is_empty()
                || facts.inside.iter().any(schema_inside)
                || !live_named(facts).is_empty()
                // After the rows load (indexes, constraints), no live type either: what the
                // definitions bind is checked before the rows load.
                || (!pre_data && facts.qualifiers.iter().any(|(schema, _)| live(schema)))
                || facts.statements.is_empty()
                || !facts.statements.iter().all(|schema| in_scope(schema.as_deref()))
                || !facts.reaches.iter().all(|schema| in_scope(Some(schema))))
        {
            return false;
        }
        if let Some((name, _)) = &facts.creates {
            return kept.contains(name) && facts.names.iter().filter(|n| known(n)).all(&kept_name);
        }
        let named: Vec<&TableName> = facts.names.iter().filter(|n| known(n)).collect();
        if !named.is_empty() {
            return named.iter().all(|n| kept_name(n));
        }
        if facts.extension || kind == "EXTENSION" {
            return !spec.beside_live_data;
        }
        true
    };
    let mut part = Part::default();
    let mut kept_facts: Vec<(&Facts, bool)> = Vec::new();
    let mut created_schemas = HashSet::new();
    let mut all_facts = entries.iter().zip(&texts);
    for (pre_data, script, out) in [(true, &pre, &mut part.pre_data), (false, &post, &mut part.post_data)] {
        out.push_str(&settings_only(script.preamble));
        for entry in &script.entries {
            let (facts, (text, defaults)) = all_facts.next().expect("facts of every entry");
            if !keep(entry.kind, facts, pre_data) {
                // A relation asked for whose definition may not run here: refused, not made
                // without it (its rows would have nowhere to go).
                if let Some((name, _)) = facts.creates.as_ref().filter(|(name, _)| kept.contains(name)) {
                    let named = live_named(facts);
                    let table = crate::error::printable(&format!("{}.{}", name.schema, name.name));
                    part.unmade.push(if named.is_empty() {
                        format!("{table}: its definition reaches outside the side schemas")
                    } else {
                        format!("{table}: its definition names {} of the live database", named.join(", "))
                    });
                }
                // Beside live data, what a restored table would have had (an index, a check, a
                // trigger) but names live objects: said, since the side table lacks it.
                let tables: Vec<&TableName> = facts.names.iter().filter(|n| known(n)).collect();
                if spec.beside_live_data
                    && facts.creates.is_none()
                    && !facts.foreign_key
                    && !tables.is_empty()
                    && tables.iter().all(|n| kept_name(n))
                {
                    let on: Vec<String> =
                        tables.iter().map(|n| crate::error::printable(&format!("{}.{}", n.schema, n.name))).collect();
                    let named: Vec<String> = if pre_data {
                        live_named(facts)
                    } else {
                        let live_ones = facts.qualifiers.iter().filter(|(schema, _)| live(schema));
                        live_ones.map(|(schema, name)| crate::error::printable(&format!("{schema}.{name}"))).collect()
                    };
                    let why = if named.is_empty() {
                        "it reaches outside the side schemas".to_string()
                    } else {
                        format!("it names {} of the live database", named.join(", "))
                    };
                    left_out.push(format!("{} of {}: {why}", entry.kind.to_lowercase(), on.join(", ")));
                }
                // Said only of a table restored: its key to one left out.
                if facts.foreign_key
                    && let Some(table) = facts.altered.as_ref().filter(|table| kept.contains(table))
                {
                    let others: Vec<String> = facts
                        .names
                        .iter()
                        .filter(|n| *n != table && known(n) && !kept_name(n))
                        .map(|n| format!("{}.{}", n.schema, n.name))
                        .collect();
                    left_out.push(format!(
                        "a foreign key of {}.{} to {}, which is left out",
                        table.schema,
                        table.name,
                        others.join(", ")
                    ));
                }
                continue;
            }
            if facts.creates.is_none()
                && entry.kind == "SCHEMA"
                && let Some(schema) = &facts.schema
            {
                created_schemas.insert(schema.clone());
            }
            if let Some((table, _)) = &facts.creates {
                for (column, named) in defaults {
                    let named: Vec<String> = named.iter().map(|n| crate::error::printable(n)).collect();
                    left_out.push(format!(
                        "default of {} (column {}): it names {} of the live database",
                        crate::error::printable(&format!("{}.{}", table.schema, table.name)),
                        crate::error::printable(column),
                        named.join(", ")
                    ));
                }
            }
            kept_facts.push((facts, pre_data));
            out.push_str(&rename(text, spec.schema_map));
        }
    }
    // A renamed schema the script does not create (`public`) is made first.
    let mut first = String::new();
    for (from, to) in spec.schema_map {
        if !created_schemas.contains(from) {
            first.push_str("CREATE SCHEMA ");
            first.push_str(&quote_ident(to));
            first.push_str(";\n");
        }
    }
    if !first.is_empty() {
        let preamble = settings_only(pre.preamble).len();
        part.pre_data.insert_str(preamble, &first);
    }
    part.runs_own_code = kept_facts
        .iter()
        .flat_map(|(f, pre_data)| {
            f.own_code.iter().cloned().chain(f.triggers.iter().filter(|_| *pre_data).map(|t| format!("trigger {t}")))
        })
        .collect();
    part.relations = kept.into_iter().cloned().collect();
    part.candidates = kinds.iter().filter(|(_, r)| **r != Relation::Sequence).map(|(n, _)| (*n).clone()).collect();
    part.left_out = left_out;
    part
}

/// A foreign key of a snapshot's schema, between tables that hold rows (a partitioned
/// table's key is its partitions').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The referencing table.
    pub table: TableName,
    /// Its columns, in the key's order.
    pub columns: Vec<String>,
    /// The tables a referenced row may be in (the referenced table, or its partitions).
    pub references: Vec<TableName>,
    /// Their columns, in the key's order.
    pub referenced: Vec<String>,
}

/// The partitioned tables of a snapshot's schema (`ALTER TABLE parent ATTACH PARTITION child`).
#[derive(Debug, Default)]
pub struct Partitions {
    children: HashMap<TableName, Vec<TableName>>,
    parent: HashMap<TableName, TableName>,
    /// Tables that inherit from a table (`INHERITS`), whose rows its queries see too.
    heirs: HashMap<TableName, Vec<TableName>>,
    /// Links (parent, child) the target database does not confirm ([`Self::confirm_links`]):
    /// not followed from a table `--rows` names.
    unconfirmed: HashSet<(TableName, TableName)>,
}

impl Partitions {
    /// Read from the scripts' statements.
    pub fn of(pre_data: &str, post_data: &str) -> Partitions {
        let mut partitions = Partitions::default();
        for entry in script::parse(pre_data).entries.iter().chain(&script::parse(post_data).entries) {
            let facts = facts(entry.sql);
            if let Some((parent, child)) = facts.attach {
                partitions.parent.insert(child.clone(), parent.clone());
                partitions.children.entry(parent).or_default().push(child);
            }
            if let Some((child, Relation::Table)) = &facts.creates {
                for parent in &facts.inherits {
                    partitions.heirs.entry(parent.clone()).or_default().push(child.clone());
                }
            }
        }
        partitions
    }

    /// Of `children` (partitions or heirs of `parent`), those linked to it by a link the target
    /// database did not refuse.
    fn confirmed(&self, parent: &TableName, children: Option<&Vec<TableName>>) -> Vec<TableName> {
        (children.into_iter().flatten())
            .filter(|child| !self.unconfirmed.contains(&(parent.clone(), (*child).clone())))
            .cloned()
            .collect()
    }

    /// The tables that have partitions (or tables attached as such).
    pub fn parents(&self) -> impl Iterator<Item = &TableName> {
        self.children.keys()
    }

    /// The tables that hold a table's rows: itself, or its partitions' (in name order), through
    /// the links the target database confirmed (when it was asked: [`Self::confirm_links`]).
    /// Each table is looked at once: a snapshot's scripts are the backup host's, and a cycle of
    /// `ATTACH PARTITION`s in them must not loop.
    pub fn leaves(&self, table: &TableName) -> Vec<TableName> {
        let mut leaves = Vec::new();
        let mut seen = HashSet::new();
        let mut todo = vec![table.clone()];
        while let Some(table) = todo.pop() {
            if !seen.insert(table.clone()) {
                continue;
            }
            let parts = self.confirmed(&table, self.children.get(&table));
            if parts.is_empty() {
                leaves.push(table);
            } else {
                todo.extend(parts);
            }
        }
        leaves.sort();
        leaves
    }

    /// The tables whose rows `SELECT … FROM table` sees: itself (or its partitions) and the
    /// tables that inherit from it, theirs too (in name order, each once).
    /// Only links the target database confirmed are followed (when it was asked).
    pub fn with_heirs(&self, table: &TableName) -> Vec<TableName> {
        let mut found = BTreeSet::new();
        let mut seen = HashSet::new();
        let mut todo = vec![table.clone()];
        while let Some(table) = todo.pop() {
            if !seen.insert(table.clone()) {
                continue;
            }
            // A partitioned table holds no rows of its own: listed all the same (the caller
            // takes the tables the snapshot holds data of), as is one whose partitions the
            // database did not confirm.
            todo.extend(self.confirmed(&table, self.children.get(&table)));
            todo.extend(self.confirmed(&table, self.heirs.get(&table)));
            found.insert(table);
        }
        found.into_iter().collect()
    }

    /// Marks the links the script declares (`ATTACH PARTITION`, `INHERITS`) that the target
    /// database does not confirm, so that `--rows` does not look for rows through them from a
    /// table it names ([`Self::with_heirs`]): the scripts are the backup host's word. (Foreign
    /// keys and the partitions they reach stay the snapshot's: `--with-related` follows them
    /// as they were; every row goes into its own table, a partition's held to its bounds.) A link whose
    /// child is in a schema `schema_map` renames goes where the restore makes it. Without
    /// `schema_map`, any other link between tables of which `database` holds either must be one
    /// there too (`pg_inherits`; a partition's parent partitioned): one declared by the snapshot
    /// alone would make `--rows` write into a live table not asked for. With `schema_map`, such
    /// a link would write outside the renamed schemas, and is not followed either. Returns each
    /// link marked, with a warning.
    pub async fn confirm_links(
        &mut self,
        database: &super::Database,
        schema_map: &[(String, String)],
    ) -> crate::error::Result<Vec<String>> {
        // (parent, child, a partition): every one declared (a table attached twice has two).
        let mut links: Vec<(TableName, TableName, bool)> =
            (self.heirs.iter())
                .flat_map(|(parent, heirs)| heirs.iter().map(move |heir| (parent.clone(), heir.clone(), false)))
                .chain((self.children.iter()).flat_map(|(parent, children)| {
                    children.iter().map(move |child| (parent.clone(), child.clone(), true))
                }))
                .filter(|(_, child, _)| renamed(schema_map, &child.schema).is_none())
                .collect();
        links.sort();
        links.dedup();
        // A table attached to two parents is no script pg_dump writes: none of its links holds.
        let mut parents: HashMap<&TableName, usize> = HashMap::new();
        for (_, child, _) in links.iter().filter(|link| link.2) {
            *parents.entry(child).or_default() += 1;
        }
        // A name PostgreSQL cannot hold (a NUL) names no table of the database: not asked.
        let impossible = |table: &TableName| table.schema.contains('\0') || table.name.contains('\0');
        let mut unconfirmed: Vec<&(TableName, TableName, bool)> = (links.iter())
            .filter(|link| (link.2 && parents[&link.1] > 1) || impossible(&link.0) || impossible(&link.1))
            .collect();
        let asked: Vec<&(TableName, TableName, bool)> =
            links.iter().filter(|link| !impossible(&link.0) && !impossible(&link.1)).collect();
        if !schema_map.is_empty() {
            unconfirmed = links.iter().collect();
        } else if !asked.is_empty() {
            let column = |pick: fn(&(TableName, TableName, bool)) -> &str| {
                asked.iter().map(|link| pick(link)).collect::<Vec<&str>>()
            };
            let (parent_schemas, parent_names) = (column(|l| &l.0.schema), column(|l| &l.0.name));
            let (child_schemas, child_names) = (column(|l| &l.1.schema), column(|l| &l.1.name));
            let partitions: Vec<bool> = asked.iter().map(|l| l.2).collect();
            let sql = "SELECT l.n FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[]) \
                           WITH ORDINALITY AS l(ps, pn, cs, cn, part, n) \
                         LEFT JOIN (pg_catalog.pg_class c JOIN pg_catalog.pg_namespace cns ON cns.oid = c.relnamespace) \
                           ON cns.nspname = l.cs AND c.relname = l.cn \
                         LEFT JOIN (pg_catalog.pg_class p JOIN pg_catalog.pg_namespace pns ON pns.oid = p.relnamespace) \
                           ON pns.nspname = l.ps AND p.relname = l.pn \
                        WHERE (c.oid IS NOT NULL OR p.oid IS NOT NULL) \
                          AND NOT (EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i \
                                            WHERE i.inhrelid = c.oid AND i.inhparent = p.oid) \
                                   AND (NOT l.part OR p.relkind = 'p'))";
            let client = database.connect().await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&parent_schemas, &parent_names, &child_schemas, &child_names, &partitions];
            for row in client.query(sql, &params).await? {
                let at = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
                unconfirmed.extend(asked.get(at).copied());
            }
        }
        unconfirmed.sort();
        unconfirmed.dedup();
        let mut warnings = Vec::new();
        for (parent, child, partition) in unconfirmed {
            self.unconfirmed.insert((parent.clone(), child.clone()));
            let said = |table: &TableName| crate::error::printable(&format!("{}.{}", table.schema, table.name));
            let (child_name, parent_name) = (said(child), said(parent));
            let link = if *partition { "is a partition of" } else { "inherits from" };
            let warning = if schema_map.is_empty() {
                format!(
                    "--rows: the snapshot says {child_name} {link} {parent_name}, but in {database} it does not: \
                     {child_name}'s rows are not looked for through {parent_name} (name {child_name} to restore them)"
                )
            } else {
                format!(
                    "--rows: the snapshot says {child_name} {link} {parent_name}, but {child_name} is in a schema \
                     --schema-map does not rename: its rows are not looked for through {parent_name} (map its schema \
                     too)"
                )
            };
            warnings.push(warning);
        }
        Ok(warnings)
    }
}

/// The names in a parenthesized list at `at` (`(a, "B")`), and where it ends.
fn name_list(tokens: &[Token<'_>], at: usize) -> Option<(Vec<String>, usize)> {
    if !tokens.get(at)?.is_punct('(') {
        return None;
    }
    let mut names = Vec::new();
    let mut at = at + 1;
    loop {
        names.push(name_of(tokens.get(at)?)?);
        let next = tokens.get(at + 1)?;
        if next.is_punct(')') {
            return Some((names, at + 2));
        }
        if !next.is_punct(',') {
            return None;
        }
        at += 2;
    }
}

/// Every foreign key of the scripts (`ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY (…)
/// REFERENCES t (…)`), with partitioned tables replaced by the partitions that hold their rows.
pub fn foreign_keys(pre_data: &str, post_data: &str, partitions: &Partitions) -> Vec<ForeignKey> {
    expand_foreign_keys(declared_foreign_keys(pre_data, post_data), partitions)
}

/// A foreign key as the script declares it: (table, columns, referenced table, their columns).
pub type DeclaredKey = (TableName, Vec<String>, TableName, Vec<String>);

/// The foreign keys the scripts declare, on the tables they name.
pub fn declared_foreign_keys(pre_data: &str, post_data: &str) -> Vec<DeclaredKey> {
    let mut keys = Vec::new();
    for entry in script::parse(pre_data).entries.iter().chain(&script::parse(post_data).entries) {
        let facts = facts(entry.sql);
        if !facts.foreign_key {
            continue;
        }
        let tokens = significant(entry.sql);
        for at in 0..tokens.len() {
            if !(is_word(tokens.get(at), "alter") && is_word(tokens.get(at + 1), "table")) {
                continue;
            }
            let Some(table) = qualified_after(&tokens, at + 2, &["if", "exists", "only"]) else { continue };
            let Some(foreign) =
                (at..tokens.len()).find(|&i| is_word(tokens.get(i), "foreign") && is_word(tokens.get(i + 1), "key"))
            else {
                continue;
            };
            let Some((columns, after)) = name_list(&tokens, foreign + 2) else { continue };
            if !is_word(tokens.get(after), "references") {
                continue;
            }
            let Some(references) = qualified_at(&tokens, after + 1) else { continue };
            let Some((referenced, _)) = name_list(&tokens, after + 4) else { continue };
            keys.push((table, columns, references, referenced));
        }
    }
    keys
}

/// Leaves out of `keys` those the target database does not have (`pg_constraint`: the same
/// table, columns in order, referenced table and columns) where it holds either table, and
/// without `schema_map`: `--with-related` writes the rows a key reaches into live tables, and
/// a key the snapshot alone declares (the backup host's word) would reach any table. Returns
/// the keys kept and a warning for each left out.
pub async fn confirm_foreign_keys(
    keys: Vec<DeclaredKey>,
    database: &super::Database,
    schema_map: &[(String, String)],
) -> crate::error::Result<(Vec<DeclaredKey>, Vec<String>)> {
    if keys.is_empty() || !schema_map.is_empty() {
        return Ok((keys, Vec::new()));
    }
    // A name PostgreSQL cannot hold (a NUL) names nothing of the database: left out, not asked.
    let impossible = |key: &DeclaredKey| {
        [&key.0.schema, &key.0.name, &key.2.schema, &key.2.name].iter().any(|name| name.contains('\0'))
            || key.1.iter().chain(&key.3).any(|name| name.contains('\0'))
    };
    let asked: Vec<usize> = (0..keys.len()).filter(|&at| !impossible(&keys[at])).collect();
    let text = |pick: fn(&DeclaredKey) -> String| asked.iter().map(|&at| pick(&keys[at])).collect::<Vec<String>>();
    let params = [
        text(|k| k.0.schema.clone()),
        text(|k| k.0.name.clone()),
        text(|k| serde_json::to_string(&k.1).expect("names serialise")),
        text(|k| k.2.schema.clone()),
        text(|k| k.2.name.clone()),
        text(|k| serde_json::to_string(&k.3).expect("names serialise")),
    ];
    let sql = "SELECT l.n FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                   WITH ORDINALITY AS l(ts, tn, tc, rs, rn, rc, n) \
                 LEFT JOIN (pg_catalog.pg_class t JOIN pg_catalog.pg_namespace tns ON tns.oid = t.relnamespace) \
                   ON tns.nspname = l.ts AND t.relname = l.tn \
                 LEFT JOIN (pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rns ON rns.oid = r.relnamespace) \
                   ON rns.nspname = l.rs AND r.relname = l.rn \
                WHERE (t.oid IS NOT NULL OR r.oid IS NOT NULL) \
                  AND NOT EXISTS ( \
                      SELECT 1 FROM pg_catalog.pg_constraint c \
                       WHERE c.contype = 'f' AND c.conrelid = t.oid AND c.confrelid = r.oid \
                         AND (SELECT pg_catalog.jsonb_agg(a.attname::text ORDER BY k.i) \
                                FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, i) \
                                JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) \
                             = l.tc::jsonb \
                         AND (SELECT pg_catalog.jsonb_agg(a.attname::text ORDER BY k.i) \
                                FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, i) \
                                JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) \
                             = l.rc::jsonb)";
    let client = database.connect().await?;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let mut left_out: HashSet<usize> = (0..keys.len()).filter(|at| !asked.contains(at)).collect();
    for row in client.query(sql, &params).await? {
        let place = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
        left_out.extend(asked.get(place).copied());
    }
    let mut kept = Vec::new();
    let mut warnings = Vec::new();
    for (at, key) in keys.into_iter().enumerate() {
        if !left_out.contains(&at) {
            kept.push(key);
            continue;
        }
        let said = |table: &TableName| crate::error::printable(&format!("{}.{}", table.schema, table.name));
        warnings.push(format!(
            "--with-related: the snapshot's foreign key from {} ({}) to {} ({}) is not one {database} has: not followed",
            said(&key.0),
            crate::error::printable(&key.1.join(", ")),
            said(&key.2),
            crate::error::printable(&key.3.join(", ")),
        ));
    }
    Ok((kept, warnings))
}

/// `keys` with partitioned tables replaced by the partitions that hold their rows.
pub fn expand_foreign_keys(keys: Vec<DeclaredKey>, partitions: &Partitions) -> Vec<ForeignKey> {
    let leaves = |table: &TableName| partitions.leaves(table);
    let mut expanded = Vec::new();
    for (table, columns, references, referenced) in keys {
        let references = leaves(&references);
        for leaf in leaves(&table) {
            expanded.push(ForeignKey {
                table: leaf,
                columns: columns.clone(),
                references: references.clone(),
                referenced: referenced.clone(),
            });
        }
    }
    expanded
}

/// The materialized views a script refreshes itself (`REFRESH MATERIALIZED VIEW schema.name`:
/// pg_dump's post-data section fills the views that held data).
pub fn refreshed_views(script_text: &str) -> HashSet<TableName> {
    let tokens = significant(script_text);
    let mut views = HashSet::new();
    for at in 0..tokens.len() {
        let statement_start = at == 0 || tokens[at - 1].is_punct(';');
        if statement_start
            && is_word(tokens.get(at), "refresh")
            && is_word(tokens.get(at + 1), "materialized")
            && is_word(tokens.get(at + 2), "view")
            && let Some(view) = qualified_after(&tokens, at + 3, &["concurrently"])
        {
            views.insert(view);
        }
    }
    views
}

/// `sql` with every schema of `map` renamed where it is named.
pub fn rename(sql: &str, map: &[(String, String)]) -> String {
    if map.is_empty() {
        return sql.to_string();
    }
    let all: Vec<Token<'_>> = Lexer::new(sql).collect();
    let significant: Vec<usize> = (0..all.len())
        .filter(|&i| !matches!(all[i].kind, Kind::Space | Kind::LineComment | Kind::BlockComment))
        .collect();
    let code = Code::find(&significant.iter().map(|&i| all[i].clone()).collect::<Vec<_>>());
    let mut out = String::with_capacity(sql.len() + 64);
    let mut copied = 0;
    for (k, &i) in significant.iter().enumerate() {
        let token = &all[i];
        let next = significant.get(k + 1).map(|&j| &all[j]);
        let previous = k.checked_sub(1).map(|p| &all[significant[p]]);
        let replacement = match token.kind {
            _ if code.bodies.contains(&token.start) => renamed_body(token.text, map),
            _ if code.search_path.contains(&token.start) => match token.kind {
                Kind::Literal => renamed_path_literal(token.text, map),
                _ => name_of(token).and_then(|name| renamed(map, &name)).map(quote_ident),
            },
            Kind::Word | Kind::QuotedIdent => {
                let qualifies = next.is_some_and(|t| t.is_punct('.')) && !previous.is_some_and(|t| t.is_punct('.'));
                let names_schema = previous.is_some_and(|t| is_word(Some(t), "schema"))
                    || (previous.is_some_and(|t| is_word(Some(t), "exists"))
                        && k >= 4
                        && is_word(Some(&all[significant[k - 4]]), "schema"));
                match name_of(token) {
                    Some(name) if qualifies || names_schema => renamed(map, &name).map(quote_ident),
                    _ => None,
                }
            }
            Kind::Literal if token.text.starts_with('\'') => {
                let cast = significant.get(k + 1..k + 4).is_some_and(|rest| {
                    all[rest[0]].is_punct(':')
                        && all[rest[1]].is_punct(':')
                        && OBJECT_NAME_TYPES.iter().any(|t| is_word(Some(&all[rest[2]]), t))
                });
                if cast { renamed_object_literal(token.text, map) } else { None }
            }
            _ => None,
        };
        if let Some(replacement) = replacement {
            out.push_str(&sql[copied..token.start]);
            out.push_str(&replacement);
            copied = token.start + token.text.len();
        }
    }
    out.push_str(&sql[copied..]);
    out
}

/// Where a script's code names schemas in text: the bodies (dollar-quoted) of SQL and PL/pgSQL
/// functions and procedures, and the elements of their `SET search_path`. By the byte offset of
/// their tokens.
#[derive(Default)]
struct Code {
    bodies: HashSet<usize>,
    search_path: HashSet<usize>,
}

/// Languages whose function bodies are SQL's tokens: their qualified names are renamed as a
/// statement's are. Any other language's body is left as written.
const SQL_LANGUAGES: [&str; 2] = ["sql", "plpgsql"];

impl Code {
    /// From a script's significant tokens.
    fn find(tokens: &[Token<'_>]) -> Code {
        let mut code = Code::default();
        for statement in statements(tokens) {
            let token = |k: usize| statement.get(k);
            let at = if is_word(token(1), "or") && is_word(token(2), "replace") { 3 } else { 1 };
            let routine =
                is_word(token(0), "create") && (is_word(token(at), "function") || is_word(token(at), "procedure"));
            if !routine {
                continue;
            }
            // `LANGUAGE` as a clause, not a parameter named so (inside the parentheses).
            let mut depth = 0i32;
            let language = (0..statement.len())
                .find(|&k| {
                    if statement[k].is_punct('(') {
                        depth += 1;
                    } else if statement[k].is_punct(')') {
                        depth -= 1;
                    }
                    depth == 0 && is_word(token(k), "language")
                })
                .and_then(|k| token(k + 1))
                .and_then(|name| match name.kind {
                    Kind::Literal => Some(name.text.trim_matches('\'').to_lowercase()),
                    _ => name_of(name),
                });
            if language.is_some_and(|language| SQL_LANGUAGES.contains(&language.as_str())) {
                code.bodies.extend(
                    statement
                        .windows(2)
                        .filter(|pair| {
                            is_word(Some(&pair[0]), "as")
                                && pair[1].kind == Kind::Literal
                                && pair[1].text.starts_with('$')
                        })
                        .map(|pair| pair[1].start),
                );
            }
            for k in 0..statement.len() {
                if is_word(token(k), "set")
                    && is_word(token(k + 1), "search_path")
                    && (is_word(token(k + 2), "to") || token(k + 2).is_some_and(|t| t.is_punct('=')))
                {
                    let mut element = k + 3;
                    while let Some(name) =
                        token(element).filter(|t| matches!(t.kind, Kind::Literal | Kind::Word | Kind::QuotedIdent))
                    {
                        code.search_path.insert(name.start);
                        if !token(element + 1).is_some_and(|t| t.is_punct(',')) {
                            break;
                        }
                        element += 2;
                    }
                }
            }
        }
        code
    }
}

/// A function's dollar-quoted body with the schemas of `map` renamed in it as in a statement
/// (it is SQL's tokens), quoted again with a tag the new body does not hold; `None` if nothing
/// in it is renamed.
fn renamed_body(literal: &str, map: &[(String, String)]) -> Option<String> {
    let tag_end = literal[1..].find('$')? + 2;
    let tag = &literal[..tag_end];
    let body = literal.strip_prefix(tag)?.strip_suffix(tag)?;
    let renamed = rename(body, map);
    if renamed == body {
        return None;
    }
    let tag = std::iter::once(tag.to_string())
        .chain((0..=renamed.len()).map(|n| format!("$crmvault_{n}$")))
        // The body's first occurrence of the tag must be the closing one (the body's end and
        // the tag's start may spell it too).
        .find(|tag| format!("{renamed}{tag}").find(tag.as_str()) == Some(renamed.len()))?;
    Some(format!("{tag}{renamed}{tag}"))
}

/// The types whose literals name an object by its qualified name (`'crm.seq'::regclass`).
const OBJECT_NAME_TYPES: [&str; 10] = [
    "regclass",
    "regproc",
    "regprocedure",
    "regtype",
    "regoper",
    "regoperator",
    "regconfig",
    "regdictionary",
    "regcollation",
    "regnamespace",
];

/// Session settings pg_dump's preamble may make (`SET name = value;`), as far as a part of a
/// schema runs them.
const PREAMBLE_SETTINGS: [&str; 12] = [
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "transaction_timeout",
    "client_encoding",
    "standard_conforming_strings",
    "check_function_bodies",
    "xmloption",
    "client_min_messages",
    "row_security",
    "default_tablespace",
    "default_table_access_method",
];

/// A statement that only sets the session up as pg_dump does, written again from its tokens:
/// `SET name = value` of a setting pg_dump makes, to a plain value, or `SELECT
/// pg_catalog.set_config('search_path', '', false)`. Not one that would make the server read
/// what follows otherwise than the lexer that cut and checked it (`standard_conforming_strings`
/// off, a `client_encoding` but UTF-8), nor one that changes who runs it (`SET ROLE`).
fn setting(statement: &[Token<'_>]) -> Option<String> {
    let words: Vec<String> = statement
        .iter()
        .map(|t| if t.kind == Kind::Word { t.text.to_ascii_lowercase() } else { t.text.to_string() })
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["set", name, "=" | "to", _] if PREAMBLE_SETTINGS.contains(name) => {
            let token = &statement[3];
            let value = match token.kind {
                Kind::Literal => literal_text(token.text)?,
                Kind::Word if token.text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    token.text.to_ascii_lowercase()
                }
                _ => return None,
            };
            let allowed = match *name {
                "standard_conforming_strings" => value.eq_ignore_ascii_case("on"),
                "client_encoding" => value.eq_ignore_ascii_case("utf8") || value.eq_ignore_ascii_case("utf-8"),
                _ => true,
            };
            allowed.then(|| format!("SET {name} = {};", quote_literal(&value)))
        }
        ["select", "pg_catalog", ".", "set_config", "(", "'search_path'", ",", "''", ",", "false", ")"] => {
            Some("SELECT pg_catalog.set_config('search_path', '', false);".to_string())
        }
        _ => None,
    }
}

/// A script's preamble as a part of it runs it: its [`setting`]s, nothing else (the preamble
/// is the snapshot's word, and names no object a part could be checked against), then
/// `standard_conforming_strings` on, which the lexer that cut and renamed the part assumes.
fn settings_only(preamble: &str) -> String {
    let tokens = significant(preamble);
    let mut kept = String::new();
    for statement in statements(&tokens) {
        if let Some(setting) = setting(statement) {
            kept.push_str(&setting);
            kept.push('\n');
        }
    }
    // pg_dump qualifies every name: nothing may resolve in a schema the connection's path holds.
    kept.push_str("SET standard_conforming_strings = on;\nSELECT pg_catalog.set_config('search_path', '', false);\n");
    kept
}

/// The text of a whole `'…'` literal (`None` for an unterminated one, or an `E''` string).
fn literal_text(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// An element of a routine's `SET search_path TO 'crm', 'public'`, renamed if `map` renames
/// it: pg_dump writes each schema's name as it is, not as an identifier, and the server quotes
/// it itself.
fn renamed_path_literal(literal: &str, map: &[(String, String)]) -> Option<String> {
    let to = renamed(map, &literal_text(literal)?)?;
    Some(format!("'{}'", to.replace('\'', "''")))
}

/// `'schema.name'` (an object name literal) with its schema renamed, if `map` renames it;
/// `'schema'` (a regnamespace) too.
fn renamed_object_literal(literal: &str, map: &[(String, String)]) -> Option<String> {
    let text = literal_text(literal)?;
    let tokens: Vec<Token<'_>> = Lexer::new(&text).collect();
    if tokens.len() == 1 {
        let to = renamed(map, &name_of(&tokens[0])?)?;
        return Some(format!("'{}'", quote_ident(to).replace('\'', "''")));
    }
    if tokens.len() < 3 || !tokens[1].is_punct('.') {
        return None;
    }
    let to = renamed(map, &name_of(&tokens[0])?)?;
    let rest = &text[tokens[1].start..];
    let renamed = format!("{}{rest}", quote_ident(to));
    Some(format!("'{}'", renamed.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Into an empty database.
    fn into_empty(wanted: &dyn Fn(&TableName) -> bool) -> Spec<'_> {
        static NONE: BTreeSet<(String, String)> = BTreeSet::new();
        Spec { wanted, schema_map: &[], beside_live_data: false, live_schemas: &[], live_inert: &NONE }
    }

    /// Beside the live schemas of [`live`], no live type inert.
    fn beside_live<'a>(wanted: &'a dyn Fn(&TableName) -> bool, map: &'a [(String, String)]) -> Spec<'a> {
        static NONE: BTreeSet<(String, String)> = BTreeSet::new();
        beside_live_with(wanted, map, &NONE)
    }

    /// Beside the live schemas of [`live`], with these live types inert.
    fn beside_live_with<'a>(
        wanted: &'a dyn Fn(&TableName) -> bool,
        map: &'a [(String, String)],
        inert: &'a BTreeSet<(String, String)>,
    ) -> Spec<'a> {
        static LIVE: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(live);
        Spec { wanted, schema_map: map, beside_live_data: true, live_schemas: &LIVE, live_inert: inert }
    }

    /// Live types inert in tests: `public.` and each name.
    fn inert(names: &[&str]) -> BTreeSet<(String, String)> {
        names.iter().map(|name| ("public".to_string(), name.to_string())).collect()
    }

    /// The live database's schemas, in tests beside live data.
    fn live() -> Vec<String> {
        ["crm", "public", "app", "pg_catalog"].map(String::from).to_vec()
    }

    fn entry(name: &str, kind: &str, schema: &str, sql: &str) -> String {
        format!("--\n-- Name: {name}; Type: {kind}; Schema: {schema}; Owner: o\n--\n\n{sql}\n\n")
    }

    fn pre() -> String {
        [
            entry("crm", "SCHEMA", "-", "CREATE SCHEMA crm;"),
            entry("citext", "EXTENSION", "-", "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public;"),
            entry("stage", "TYPE", "crm", "CREATE TYPE crm.stage AS ENUM ('a', 'b');"),
            entry("f()", "FUNCTION", "crm", "CREATE FUNCTION crm.f() RETURNS trigger AS $$ SELECT 1 FROM crm.deals $$ LANGUAGE sql;"),
            entry("companies", "TABLE", "crm", "CREATE TABLE crm.companies (\n    id integer NOT NULL\n);"),
            entry("deals", "TABLE", "crm", "CREATE TABLE crm.deals (\n    id integer NOT NULL,\n    company_id integer,\n    stage crm.stage DEFAULT 'a'::crm.stage\n);"),
            entry("deals_id_seq", "SEQUENCE", "crm", "CREATE SEQUENCE crm.deals_id_seq START WITH 1;"),
            entry("deals_id_seq", "SEQUENCE OWNED BY", "crm", "ALTER SEQUENCE crm.deals_id_seq OWNED BY crm.deals.id;"),
            entry("deals id", "DEFAULT", "crm", "ALTER TABLE ONLY crm.deals ALTER COLUMN id SET DEFAULT nextval('crm.deals_id_seq'::regclass);"),
            entry("companies_id_seq", "SEQUENCE", "crm", "ALTER TABLE crm.companies ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (\n    SEQUENCE NAME crm.companies_id_seq\n    START WITH 1\n);"),
            entry("p", "TABLE", "crm", "CREATE TABLE crm.p (\n    id integer\n)\nPARTITION BY RANGE (id);"),
            entry("p1", "TABLE", "crm", "CREATE TABLE crm.p1 (\n    id integer\n);"),
            entry("p1", "TABLE ATTACH", "crm", "ALTER TABLE ONLY crm.p ATTACH PARTITION crm.p1 FOR VALUES FROM (0) TO (10);"),
            entry("big_deals", "VIEW", "crm", "CREATE VIEW crm.big_deals AS\n SELECT d.id FROM (crm.deals d JOIN crm.companies c ON ((c.id = d.company_id)));"),
            entry("TABLE deals", "COMMENT", "crm", "COMMENT ON TABLE crm.deals IS 'crm.companies is not a name here';"),
            entry("SCHEMA crm", "ACL", "-", "GRANT USAGE ON SCHEMA crm TO reader;"),
        ]
        .concat()
    }

    fn post() -> String {
        [
            entry("deals deals_pkey", "CONSTRAINT", "crm", "ALTER TABLE ONLY crm.deals\n    ADD CONSTRAINT deals_pkey PRIMARY KEY (id);"),
            entry("p_idx", "INDEX", "crm", "CREATE INDEX p_idx ON ONLY crm.p USING btree (id);"),
            entry("p1_idx", "INDEX", "crm", "CREATE INDEX p1_idx ON crm.p1 USING btree (id);"),
            entry("p1_idx", "INDEX ATTACH", "crm", "ALTER INDEX crm.p_idx ATTACH PARTITION crm.p1_idx;"),
            entry("deals t", "TRIGGER", "crm", "CREATE TRIGGER t BEFORE UPDATE ON crm.deals FOR EACH ROW EXECUTE FUNCTION crm.f();"),
            entry("deals deals_company_fkey", "FK CONSTRAINT", "crm", "ALTER TABLE ONLY crm.deals\n    ADD CONSTRAINT deals_company_fkey FOREIGN KEY (company_id) REFERENCES crm.companies(id);"),
        ]
        .concat()
    }

    fn wanted(patterns: &'static [&'static str]) -> impl Fn(&TableName) -> bool {
        move |t: &TableName| patterns.contains(&format!("{}.{}", t.schema, t.name).as_str())
    }

    #[test]
    fn one_table_takes_what_it_needs_and_nothing_that_names_what_is_left_out() {
        let wanted = wanted(&["crm.deals"]);
        let part = select(&pre(), &post(), &into_empty(&wanted));
        let made: Vec<String> = part.relations.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
        assert_eq!(made, ["crm.deals", "crm.deals_id_seq"]);
        for kept in [
            "CREATE SCHEMA crm",
            "CREATE TYPE crm.stage",
            "CREATE FUNCTION crm.f",
            "CREATE TABLE crm.deals",
            "OWNED BY crm.deals.id",
            "nextval('crm.deals_id_seq'",
            "COMMENT ON TABLE crm.deals",
            "GRANT USAGE",
            "CREATE EXTENSION",
        ] {
            assert!(part.pre_data.contains(kept), "{kept}: {}", part.pre_data);
        }
        for gone in ["crm.companies (", "crm.p ", "crm.p1", "VIEW"] {
            assert!(!part.pre_data.contains(gone), "{gone}: {}", part.pre_data);
        }
        assert!(part.post_data.contains("deals_pkey") && part.post_data.contains("CREATE TRIGGER t"));
        assert!(!part.post_data.contains("FOREIGN KEY") && !part.post_data.contains("p_idx"), "{}", part.post_data);
        assert_eq!(part.left_out, ["a foreign key of crm.deals to crm.companies, which is left out"]);
        // A key of a table left out to one restored is nothing to say.
        let companies = self::wanted(&["crm.companies"]);
        let part = select(&pre(), &post(), &into_empty(&companies));
        assert!(part.left_out.is_empty(), "{:?}", part.left_out);
    }

    /// Large objects come only with the whole snapshot: a part made them empty, under their
    /// old oids, with their owners, grants and comments.
    #[test]
    fn a_part_makes_no_large_object() {
        let (pre, post) = pg_dump_kinds();
        let pre = [
            pre.as_str(),
            &entry("LARGE OBJECT 4242", "COMMENT", "-", "COMMENT ON LARGE OBJECT 4242 IS 'x';"),
            &entry("LARGE OBJECT 4242", "ACL", "-", "GRANT SELECT ON LARGE OBJECT 4242 TO app;"),
        ]
        .concat();
        let wanted = wanted(&["crm.deals"]);
        let part = select(&pre, &post, &into_empty(&wanted));
        assert!(part.pre_data.contains("CREATE TABLE crm.deals"), "{}", part.pre_data);
        for gone in ["lo_create", "LARGE OBJECT"] {
            assert!(!part.pre_data.contains(gone), "{gone}: {}", part.pre_data);
        }
    }

    #[test]
    fn a_partition_brings_its_parent_and_a_parent_its_partitions_and_a_view_its_tables() {
        let wanted = wanted(&["crm.p1"]);
        let part = select(&pre(), &post(), &into_empty(&wanted));
        assert!(part.makes("crm", "p") && part.makes("crm", "p1"));
        assert!(part.post_data.contains("ATTACH PARTITION crm.p1_idx"));
        let wanted_parent = self::wanted(&["crm.p"]);
        let part = select(&pre(), &post(), &into_empty(&wanted_parent));
        assert!(part.makes("crm", "p1"));
        let view_only = self::wanted(&["crm.big_deals", "crm.deals"]);
        let part = select(&pre(), &post(), &into_empty(&view_only));
        assert!(!part.makes("crm", "big_deals"));
        assert!(part.left_out.iter().any(|l| l.starts_with("view crm.big_deals")), "{:?}", part.left_out);
        let both = self::wanted(&["crm.big_deals", "crm.deals", "crm.companies"]);
        let part = select(&pre(), &post(), &into_empty(&both));
        assert!(part.makes("crm", "big_deals") && part.post_data.contains("FOREIGN KEY"));
        // An identity column's sequence comes with its table.
        assert!(part.makes("crm", "companies_id_seq") && part.pre_data.contains("SEQUENCE NAME crm.companies_id_seq"));
    }

    #[test]
    fn the_bodies_and_search_paths_of_sql_and_plpgsql_functions_are_renamed_and_other_languages_left() {
        let map = [("crm".to_string(), "crm_old".to_string())];
        let plpgsql = "CREATE FUNCTION crm.log() RETURNS trigger\n    LANGUAGE plpgsql\n    SET search_path TO 'crm', 'public'\n    \
                       AS $$ BEGIN INSERT INTO crm.audit_log VALUES ('crm.x'); PERFORM 'crm.seq'::regclass; RETURN NEW; END $$;";
        assert_eq!(
            rename(plpgsql, &map),
            "CREATE FUNCTION \"crm_old\".log() RETURNS trigger\n    LANGUAGE plpgsql\n    SET search_path TO 'crm_old', 'public'\n    \
             AS $$ BEGIN INSERT INTO \"crm_old\".audit_log VALUES ('crm.x'); PERFORM '\"crm_old\".seq'::regclass; RETURN NEW; END $$;"
        );
        // The language named after the body, a procedure, a tag of pg_dump's own.
        let sql = "CREATE OR REPLACE PROCEDURE crm.p() AS $_$ DELETE FROM crm.t $_$ LANGUAGE sql; SELECT crm.f();";
        assert_eq!(
            rename(sql, &map),
            "CREATE OR REPLACE PROCEDURE \"crm_old\".p() AS $_$ DELETE FROM \"crm_old\".t $_$ LANGUAGE sql; SELECT \"crm_old\".f();"
        );
        // Another language's body is not SQL: left as written. So is a body that names nothing renamed.
        for body in [
            "CREATE FUNCTION crm.py() RETURNS int LANGUAGE plpython3u AS $$ return crm.x $$;",
            "CREATE FUNCTION crm.c() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM other.t $$;",
        ] {
            let renamed = rename(body, &map);
            assert!(renamed.starts_with("CREATE FUNCTION \"crm_old\"."), "{renamed}");
            assert!(renamed.ends_with(&body[body.find(" AS ").unwrap()..]), "{renamed}");
        }
        // A search path's names are names, not identifiers; unquoted, they are identifiers.
        let map_odd = [("My Crm".to_string(), "it's new".to_string()), ("crm".to_string(), "Crm Old".to_string())];
        let path =
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = 'My Crm', crm, 'public' AS $$ SELECT 1 $$;";
        assert_eq!(
            rename(path, &map_odd),
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = 'it''s new', \"Crm Old\", 'public' AS $$ SELECT 1 $$;"
        );
        // Unterminated literals where a name may be: left as they are, never a panic.
        for odd in ["SET search_path TO 'é", "SET search_path TO '", "SELECT 'crm.x", "SELECT 'é"] {
            let body = format!("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ {odd}");
            assert_eq!(rename(&body, &map), body);
            assert_eq!(rename(&format!("{body} $$;"), &map), format!("{body} $$;"));
            assert_eq!(rename(&format!("{odd}::regclass"), &map), format!("{odd}::regclass"));
        }
        // A parameter named `language` is not the language clause.
        let parameter = "CREATE FUNCTION crm.f(language text) RETURNS int LANGUAGE sql AS $$ SELECT crm.n() $$;";
        assert!(rename(parameter, &map).contains("$$ SELECT \"crm_old\".n() $$"), "{}", rename(parameter, &map));
        // A new name holding the body's tag gets another tag, so the body still ends where it did.
        let map = [("crm".to_string(), "a$$b".to_string())];
        let renamed = rename("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT crm.n() $$;", &map);
        assert_eq!(
            renamed,
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $crmvault_0$ SELECT \"a$$b\".n() $crmvault_0$;"
        );
        // ...and one whose end and the tag's start would spell the tag, another still.
        let renamed = rename("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT crm.n() $crmvault_0$$;", &map);
        assert!(renamed.ends_with("AS $crmvault_1$ SELECT \"a$$b\".n() $crmvault_0$crmvault_1$;"), "{renamed}");
    }

    #[test]
    fn a_side_schema_renames_every_name_and_makes_only_its_own_objects() {
        let wanted = wanted(&["crm.deals", "crm.companies"]);
        let map = [("crm".to_string(), "crm_old".to_string())];
        let part = select(&pre(), &post(), &beside_live(&wanted, &map));
        for renamed in [
            "CREATE SCHEMA \"crm_old\";",
            "CREATE TYPE \"crm_old\".stage",
            "stage \"crm_old\".stage DEFAULT 'a'::\"crm_old\".stage",
            "nextval('\"crm_old\".deals_id_seq'::regclass)",
            "OWNED BY \"crm_old\".deals.id",
            "'crm.companies is not a name here'",
            "$$ SELECT 1 FROM \"crm_old\".deals $$",
        ] {
            assert!(part.pre_data.contains(renamed), "{renamed}: {}", part.pre_data);
        }
        assert!(!part.pre_data.contains("EXTENSION"), "the live database has its extensions");
        assert!(!part.pre_data.contains("GRANT"), "the side objects carry no grant: {}", part.pre_data);
        assert!(part.post_data.contains("REFERENCES \"crm_old\".companies(id)"), "{}", part.post_data);
        assert!(part.post_data.contains("EXECUTE FUNCTION \"crm_old\".f()"));
        // `public` has no CREATE SCHEMA in a dump: made first.
        let map = [("public".to_string(), "public_old".to_string())];
        let none = self::wanted(&[]);
        let part = select(&pre(), &post(), &beside_live(&none, &map));
        assert!(part.pre_data.contains("CREATE SCHEMA \"public_old\";"), "{}", part.pre_data);
        assert!(!part.pre_data.contains("crm"), "{}", part.pre_data);
    }

    #[test]
    fn a_statement_hidden_from_this_lexer_by_its_own_rules_is_not_run_nor_a_preambles() {
        let map = [("crm".to_string(), "crm_old".to_string())];
        let wanted = wanted(&["crm.deals"]);
        // The server reads `$€$` as a dollar quote and a no-break space as part of a word:
        // the DROP is a statement of its own, on a live table, and not made.
        for hidden in [
            "COMMENT ON TABLE crm.deals IS 'x' --c\r; DROP TABLE public.live --\n;",
            "CREATE FUNCTION crm.g() RETURNS text LANGUAGE sql AS $€$ SELECT ' $€$; DROP TABLE public.live; -- ';",
            "CREATE FUNCTION crm.h() RETURNS text LANGUAGE sql AS $a\u{a0}$ SELECT ' $a\u{a0}$; DROP TABLE public.live; -- ';",
        ] {
            let pre = format!("{}{}", pre(), entry("g()", "FUNCTION", "crm", hidden));
            let part = select(&pre, &post(), &beside_live(&wanted, &map));
            assert!(!part.pre_data.contains("DROP TABLE"), "{}", part.pre_data);
        }
        // A preamble runs only the settings pg_dump makes, and never turns off the quoting
        // rules this lexer read the script by.
        // Each is written again from its tokens: what the server might read between them (a
        // comment this lexer ends elsewhere) is not sent.
        let preamble = "SET statement_timeout = 0;\nSET standard_conforming_strings = off;\n\
                        SELECT pg_catalog.set_config('search_path', '', false);\nDROP TABLE public.live;\n\
                        SET role = postgres;\nSET client_encoding = 'SJIS';\n\
                        SET client_encoding --x\r= 'UTF8'; DROP TABLE public.live; SET client_encoding --\n= 'UTF8';\n\
                        SET check_function_bodies = E'false';\n";
        let part = select(&format!("{preamble}{}", pre()), &post(), &beside_live(&wanted, &map));
        let first = &part.pre_data[..part.pre_data.find("--").unwrap_or(part.pre_data.len())];
        assert_eq!(
            first,
            "SET statement_timeout = '0';\nSELECT pg_catalog.set_config('search_path', '', false);\n\
             SET client_encoding = 'UTF8';\nSET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\
             SELECT pg_catalog.set_config('search_path', '', false);\n"
        );
    }

    #[test]
    fn beside_live_data_a_table_may_name_the_live_types_that_run_no_code_and_one_naming_more_is_unmade() {
        let map = [("crm".to_string(), "crm_old".to_string())];
        let all_crm = |t: &TableName| t.schema == "crm";
        let tables = [
            entry("notes", "TABLE", "crm", "CREATE TABLE crm.notes (\n    id integer,\n    tags public.hstore,\n    mails public.citext[]\n);"),
            entry("calls", "TABLE", "crm", "CREATE TABLE crm.calls (\n    id integer,\n    u uuid DEFAULT public.uuid_generate_v4() NOT NULL,\n    n public.citext DEFAULT ''::public.citext,\n    s text DEFAULT (OPERATOR(public.||) 'x')\n);"),
            entry("emb", "TABLE", "crm", "CREATE TABLE crm.emb (\n    id integer,\n    v public.vector(1536),\n    g public.geometry(Point,4326) DEFAULT '0101'::public.geometry(Point,4326) NOT NULL\n);"),
            entry("vcall", "TABLE", "crm", "CREATE TABLE crm.vcall (\n    id integer DEFAULT public.vector(3),\n    v public.vector(3) CHECK ((public.vector(3) IS NOT NULL))\n);"),
            entry("gen", "TABLE", "crm", "CREATE TABLE crm.gen (\n    id integer,\n    g text GENERATED ALWAYS AS (public.uuid_generate_v4()) STORED\n);"),
            entry("sel", "VIEW", "crm", "CREATE VIEW crm.sel AS\n SELECT ( SELECT public.vector(3) AS vector) AS v;"),
            entry("made", "TABLE", "crm", "CREATE TABLE crm.made (\n    id integer,\n    CONSTRAINT c CHECK ((public.hstore('a', 'b') IS NOT NULL))\n);"),
            entry("mail", "TABLE", "crm", "CREATE TABLE crm.mail (\n    id integer,\n    m public.mail\n);"),
            entry("heir", "TABLE", "crm", "CREATE TABLE crm.heir (\n    tags public.hstore\n)\nINHERITS (public.live);"),
            entry("r", "TYPE", "crm", "CREATE TYPE crm.r AS RANGE (\n    subtype = integer,\n    subtype_diff = public.hstore\n);"),
            entry("long", "TABLE", "crm", &format!("CREATE TABLE crm.long (\n    id integer CHECK (({}xyz.evil(id) > 0))\n);", "s".repeat(63))),
        ]
        .concat();
        let inert = inert(&["hstore", "citext", "vector", "geometry"]);
        let index = entry(
            "notes_tags",
            "INDEX",
            "crm",
            "CREATE INDEX notes_tags ON crm.notes USING btree (((tags)::public.hstore));",
        );
        let part = select(
            &format!("{}{tables}", self::pre()),
            &format!("{}{index}", post()),
            &beside_live_with(&all_crm, &map, &inert),
        );
        // After the rows load, not even such a type: what the definitions bind is checked by
        // oid before the rows load. Said.
        assert!(!part.post_data.contains("notes_tags"), "{}", part.post_data);
        assert!(
            part.left_out.contains(&"index of crm.notes: it names public.hstore of the live database".to_string()),
            "{:?}",
            part.left_out
        );
        assert!(
            part.pre_data
                .contains("\"crm_old\".notes (\n    id integer,\n    tags public.hstore,\n    mails public.citext[]"),
            "{}",
            part.pre_data
        );
        // A default that names a live object is left out of the side table, and said; one of
        // an inert type stays.
        assert!(
            part.pre_data.contains(
                "\"crm_old\".calls (\n    id integer,\n    u uuid  NOT NULL,\n    n public.citext DEFAULT ''::public.citext,\n    s text \n);"
            ),
            "{}",
            part.pre_data
        );
        for said in [
            "default of crm.calls (column u): it names public.uuid_generate_v4() of the live database",
            "default of crm.calls (column s): it names an operator of the live database",
        ] {
            assert!(part.left_out.contains(&said.to_string()), "{said}: {:?}", part.left_out);
        }
        // A type's modifier where a type is written is no call; the same words elsewhere are.
        assert!(
            part.pre_data.contains(
                "\"crm_old\".emb (\n    id integer,\n    v public.vector(1536),\n    g public.geometry(Point,4326) DEFAULT '0101'::public.geometry(Point,4326) NOT NULL\n);"
            ),
            "{}",
            part.pre_data
        );
        assert_eq!(
            part.unmade,
            [
                "crm.vcall: its definition names public.vector() of the live database",
                "crm.gen: its definition names public.uuid_generate_v4() of the live database",
                "crm.sel: its definition names public.vector() of the live database",
                "crm.made: its definition names public.hstore() of the live database",
                "crm.mail: its definition names public.mail of the live database",
                "crm.heir: its definition names public.live of the live database",
                "crm.long: its definition reaches outside the side schemas",
            ]
        );
        // A function named as an option's value is a function, whatever type shares its name.
        assert!(!part.pre_data.contains("subtype_diff"), "{}", part.pre_data);
        assert!(!part.pre_data.contains(".sel AS"), "{}", part.pre_data);
        for name in ["vcall", "gen", "made", "mail", "heir"] {
            assert!(!part.pre_data.contains(&format!(".{name} (")), "{name}: {}", part.pre_data);
        }
        // Into an empty database nothing is live.
        let empty = select(&format!("{}{tables}", self::pre()), &post(), &into_empty(&all_crm));
        assert!(empty.unmade.is_empty(), "{:?}", empty.unmade);
    }

    #[test]
    fn a_default_is_cut_whole_and_a_call_after_a_comma_in_square_brackets_is_no_type() {
        let map = [("crm".to_string(), "crm_side".to_string())];
        let all_crm = |t: &TableName| t.schema == "crm";
        let inert = inert(&["hstore", "citext"]);
        let part = |sql: &str| {
            let pre =
                format!("{}{}", entry("crm", "SCHEMA", "-", "CREATE SCHEMA crm;"), entry("t", "TABLE", "crm", sql));
            select(&pre, "", &beside_live_with(&all_crm, &map, &inert))
        };
        // A comma inside ARRAY[…] ends no column: the call after it is a call, and the whole
        // default goes (found by an attack run: the call was read as the inert type).
        for sql in [
            "CREATE TABLE crm.t (\n    id integer,\n    f boolean[] DEFAULT ARRAY[true, NOT public.hstore(true)]\n);",
            "CREATE TABLE crm.t (\n    id integer,\n    f text[] DEFAULT ARRAY['x', CASE public.citext(current_user) WHEN 'a' THEN 'b' END]\n);",
            "CREATE TABLE crm.t (\n    id integer,\n    f text[] DEFAULT ARRAY[(public.uuid_generate_v4())::text, 'x'::text]\n);",
        ] {
            let part = part(sql);
            assert!(part.pre_data.contains("\"crm_side\".t (\n    id integer,\n    f "), "{}", part.pre_data);
            assert!(!part.pre_data.contains("ARRAY") && !part.pre_data.contains("public."), "{}", part.pre_data);
            assert_eq!(part.left_out.len(), 1, "{:?}", part.left_out);
        }
        // An element that starts with DEFAULT is no column (and panicked the cut).
        let odd = part("CREATE TABLE crm.t (DEFAULT public.f());");
        assert_eq!(odd.unmade, ["crm.t: its definition names public.f() of the live database"]);
    }

    #[test]
    fn beside_live_data_only_definitions_run_and_none_names_or_changes_a_live_object() {
        let map = [("crm".to_string(), "crm_old".to_string())];
        let all_crm = |t: &TableName| t.schema == "crm";
        // Each passed when the first qualified name decided; each ends with a mark.
        let attacks = [
            "DROP FUNCTION IF EXISTS crm.nothing(), public.livefn() /*m1*/;",
            "WITH a AS (SELECT FROM crm.deals) SELECT pg_catalog.set_config('track_counts', 'off', false) /*m2*/;",
            "WITH a AS (SELECT FROM crm.deals) UPDATE public.livetab SET x = 99 /*m3*/;",
            "SELECT crm.f() /*m4*/;",
            "CALL crm.p() /*m5*/;",
            "COPY (SELECT 1 FROM crm.deals) TO PROGRAM 'id' /*m6*/;",
            "GRANT ALL ON TABLE crm.deals, public.live TO PUBLIC /*m7*/;",
            "GRANT USAGE ON SCHEMA crm TO PUBLIC /*m8*/;",
            "ALTER FUNCTION crm.f() SET SCHEMA public /*m9*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_catalog.setval('crm.s', 1) > 0)) /*m10*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((lo_unlink(16400) > 0)) /*m11*/;",
            "CREATE TABLE crm.x AS SELECT 1 /*m12*/;",
            "CREATE MATERIALIZED VIEW crm.mv AS SELECT 1 AS one /*m13*/;",
            "CREATE INDEX i ON crm.deals USING btree (db.public.livefn(id)) /*m14*/;",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA crm GRANT ALL ON TABLES TO PUBLIC /*m15*/;",
            "CREATE TABLE crm.y (id integer DEFAULT nextval('public.live_seq'::regclass)) /*m16*/;",
            "CREATE TABLE crm.z (id integer DEFAULT pg_catalog.nextval(('pub' || 'lic.s')::regclass)) /*m17*/;",
            "CREATE TRIGGER t AFTER INSERT ON crm.deals FOR EACH ROW EXECUTE FUNCTION \"public\".f() /*m18*/;",
            "CREATE RULE \"_RETURN\" AS ON SELECT TO crm.deals DO INSTEAD SELECT 1 /*m22*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT t CHECK ((ts_rewrite('a'::tsquery, 'SELECT 1') IS NOT NULL)) /*m23*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT a CHECK ((pg_advisory_lock(1) IS NOT NULL)) /*m24*/;",
            "CREATE TABLE crm.o (id integer DEFAULT nextval('16385'::regclass)) /*m25*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT x CHECK (crm.U&\"\\0066\"(id)) /*m26*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT q CHECK ((query_to_xml('DELETE FROM x', false, false, '') IS NOT NULL)) /*m19*/;",
            "ALTER SCHEMA crm OWNER TO evil /*m20*/",
            "CREATE SCHEMA crm2 AUTHORIZATION evil /*m21*/;",
            "CREATE DOMAIN pg_temp.trigger AS integer /*m27*/;",
            "CREATE STATISTICS crm.st (dependencies) ON id, company_id FROM livedb.crm.deals /*m28*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT e CHECK ((pg_catalog.length(E'x'\n'\\' ' || pg_catalog.lo_export(1, $p$/tmp/x$p$)::text || ' -- '\n) > 0)) /*m29*/;",
            // Evaluated as the statement runs, nothing kept for the tripwire to find.
            "CREATE TABLE crm.p3 PARTITION OF crm.deals FOR VALUES IN ((ARRAY['/etc/hostname'])[1].pg_read_file) /*m30*/;",
            "ALTER TABLE crm.deals ALTER COLUMN body TYPE text USING ((ARRAY[body])[1].pg_read_file) /*m31*/;",
            "ALTER TABLE crm.deals ADD COLUMN leak text DEFAULT 'x' /*m32*/;",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((((ARRAY['/x'])[1].pg_stat_file) IS NULL)) /*m33*/;",
        ];
        let entries: String = attacks.iter().map(|sql| entry("x", "COMMENT", "crm", sql)).collect();
        let part = select(&format!("{}{entries}", pre()), &post(), &beside_live(&all_crm, &map));
        for n in 1..=attacks.len() {
            assert!(!part.pre_data.contains(&format!("/*m{n}*/")), "m{n}: {}", part.pre_data);
        }
        // What pg_dump writes for a side object runs.
        let own = [
            "CREATE TABLE crm.w (id integer DEFAULT nextval('crm.w_seq'::regclass)) /*k1*/;",
            "CREATE MATERIALIZED VIEW crm.mw AS\n SELECT 1 AS one\n  WITH NO DATA /*k2*/;",
            "ALTER TABLE ONLY crm.deals ADD CONSTRAINT deals_pos CHECK ((id > 0)) /*k3*/;",
        ];
        let entries: String = own.iter().map(|sql| entry("w", "TABLE", "crm", sql)).collect();
        let part = select(&format!("{}{entries}", pre()), &post(), &beside_live(&all_crm, &map));
        for n in 1..=own.len() {
            assert!(part.pre_data.contains(&format!("/*k{n}*/")), "k{n}: {}", part.pre_data);
        }
    }

    #[test]
    fn the_routines_a_part_makes_and_the_restore_runs_are_named_and_c_is_never_made() {
        let map = [("crm".to_string(), "crm_old".to_string())];
        let all_crm = |t: &TableName| t.schema == "crm";
        let spec = beside_live(&all_crm, &map);
        let named = |names: &[&str]| names.iter().map(ToString::to_string).collect::<BTreeSet<_>>();
        // Every routine, operator and operator class counts, called or not: calls are spelled
        // too many ways to find (`crm_old.f(`, `U&"\0066"`, after `ON`), and an operator
        // class is called unnamed.
        let routines = [
            entry("imm(integer)", "FUNCTION", "crm", "CREATE FUNCTION crm.imm(integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;"),
            entry("===", "OPERATOR", "crm", "CREATE OPERATOR crm.=== (FUNCTION = crm.imm, LEFTARG = integer, RIGHTARG = integer);"),
            entry("stage_ops", "OPERATOR CLASS", "crm", "CREATE OPERATOR CLASS crm.stage_ops DEFAULT FOR TYPE crm.stage USING btree AS FUNCTION 1 crm.imm(integer);"),
        ]
        .concat();
        let part = select(&format!("{}{routines}", pre()), &post(), &spec);
        assert_eq!(part.runs_own_code, named(&["crm.imm", "crm.===", "crm.stage_ops"]));
        // A trigger function is called by triggers alone; a trigger made after the rows load
        // (post-data, as pg_dump makes them) fires for none of them, one made before for each.
        let touch = entry(
            "touch()",
            "FUNCTION",
            "crm",
            "CREATE FUNCTION crm.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;",
        );
        let trigger = entry(
            "t",
            "TRIGGER",
            "crm",
            "CREATE TRIGGER t BEFORE INSERT ON crm.deals FOR EACH ROW EXECUTE FUNCTION crm.touch();",
        );
        let part = select(&format!("{}{touch}", pre()), &format!("{}{trigger}", post()), &spec);
        assert!(part.runs_own_code.is_empty(), "{:?}", part.runs_own_code);
        let part = select(&format!("{}{touch}{trigger}", pre()), &post(), &spec);
        assert_eq!(part.runs_own_code, named(&["trigger t"]));
        // Neither a parameter spelled `returns trigger` nor those words in a `BEGIN ATOMIC` body
        // make a trigger function: only the RETURNS clause does.
        let posing = [
            entry("p(trigger)", "FUNCTION", "crm", "CREATE FUNCTION crm.p(returns trigger) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;"),
            entry("s(integer)", "FUNCTION", "crm", "CREATE FUNCTION crm.s(x integer) RETURNS boolean\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT returns trigger FROM (SELECT true AS returns) q;\nEND;"),
        ]
        .concat();
        let part = select(&format!("{}{posing}", pre()), &post(), &spec);
        assert_eq!(part.runs_own_code, named(&["crm.p", "crm.s"]));
        // A routine in C runs whatever a library holds: not made beside live data.
        for native in [
            "CREATE FUNCTION crm.sys(cstring) RETURNS integer\n    LANGUAGE c\n    AS 'libc.so.6', 'system';",
            "CREATE FUNCTION crm.int(cstring) RETURNS integer LANGUAGE internal AS 'int4in';",
        ] {
            let part = select(&format!("{}{}", pre(), entry("sys", "FUNCTION", "crm", native)), &post(), &spec);
            assert!(!part.pre_data.contains("(cstring)"), "{native}: {}", part.pre_data);
        }
    }

    #[test]
    fn statements_are_cut_as_psql_cuts_them() {
        let cut = |sql: &str| statements_of(sql).into_iter().map(str::to_string).collect::<Vec<_>>();
        // `BEGIN ATOMIC` opens a body only in a routine's definition; `CASE … END` inside one
        // does not close it.
        assert_eq!(
            cut(
                "CREATE VIEW crm.v AS SELECT x.begin atomic FROM (SELECT 1 AS begin) x; DROP FUNCTION public.livefn(); \
                 CREATE VIEW crm.v2 AS SELECT CASE WHEN true THEN 1 END;"
            ),
            [
                "CREATE VIEW crm.v AS SELECT x.begin atomic FROM (SELECT 1 AS begin) x",
                "DROP FUNCTION public.livefn()",
                "CREATE VIEW crm.v2 AS SELECT CASE WHEN true THEN 1 END",
            ]
        );
        let routine = "CREATE OR REPLACE PROCEDURE crm.p()\n LANGUAGE sql\n BEGIN ATOMIC\n \
                       SELECT CASE WHEN true THEN 1 END;\n SELECT 2;\nEND";
        assert_eq!(cut(&format!("{routine};\nSELECT 3;")), [routine, "SELECT 3"]);
        // `begin` is a name pg_dump writes unquoted: a parameter's, a column's.
        let named = "CREATE FUNCTION crm.f_begin(begin integer) RETURNS integer\n    LANGUAGE sql\n    \
                     BEGIN ATOMIC\n SELECT (f_begin.begin + 1);\nEND";
        let column = "CREATE FUNCTION crm.f_col() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n \
                      SELECT c.begin FROM crm.contacts c LIMIT 1;\nEND";
        assert_eq!(cut(&format!("{named};\n{column};\nSELECT 5")), [named, column, "SELECT 5"]);
        let function = "CREATE FUNCTION crm.f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END";
        assert_eq!(cut(&format!("-- c\n{function}; /* d */ SELECT 4")), [function, "SELECT 4"]);
        // A string goes on past white space holding a newline (and `--` comments), an escape
        // string's next segment with its backslashes: `'\\' ; DROP …'` is text to the server.
        let continued = "COMMENT ON TABLE crm.t IS E'x'\n'\\' ; DROP TABLE crm.y; -- '";
        assert_eq!(cut(&format!("{continued};SELECT 6")), [continued, "SELECT 6"]);
        let commented = "COMMENT ON TABLE crm.t IS E'x' -- c\n  \n-- d\n'\\' ; DROP TABLE crm.y; -- '";
        assert_eq!(cut(&format!("{commented};SELECT 7")), [commented, "SELECT 7"]);
        // Without a newline, or with a block comment between, no continuation: two literals.
        assert_eq!(cut("SELECT E'x' '\\' ; SELECT 8"), ["SELECT E'x' '\\'", "SELECT 8"]);
        assert_eq!(cut("SELECT E'x' /* c */\n'\\' ; SELECT 9"), ["SELECT E'x' /* c */\n'\\'", "SELECT 9"]);
        // A standard string's next segment is standard too.
        assert_eq!(cut("SELECT 'x'\n'\\' ; SELECT 10"), ["SELECT 'x'\n'\\'", "SELECT 10"]);
    }

    #[test]
    fn beside_live_data_an_entry_that_changes_how_the_session_reads_or_who_it_is_is_not_run() {
        let map = [("crm".to_string(), "crm_old".to_string())];
        let wanted = wanted(&["crm.deals"]);
        for setting in [
            "SET standard_conforming_strings = off;",
            "SET client_encoding = 'SJIS';",
            "SET role = postgres;",
            "RESET ROLE;",
            "SET SESSION AUTHORIZATION postgres;",
            "SELECT pg_catalog.set_config('role', 'postgres', false);",
        ] {
            let pre = format!(
                "{}{}",
                pre(),
                entry("deals", "COMMENT", "crm", &format!("{setting}\nCOMMENT ON TABLE crm.deals IS 'x';"))
            );
            let part = select(&pre, &post(), &beside_live(&wanted, &map));
            assert!(!part.pre_data.contains(setting), "{setting}: {}", part.pre_data);
        }
        // pg_dump's own, in an entry, are run.
        let pre = format!(
            "{}{}",
            pre(),
            entry("t", "TABLE", "crm", "SET default_tablespace = '';\nCREATE TABLE crm.t (id integer);")
        );
        let all_crm = |t: &TableName| t.schema == "crm";
        let part = select(&pre, &post(), &beside_live(&all_crm, &map));
        assert!(
            part.pre_data.contains("SET default_tablespace = '';\nCREATE TABLE \"crm_old\".t"),
            "{}",
            part.pre_data
        );
    }

    #[test]
    fn beside_live_data_a_header_cannot_bring_in_a_statement_on_a_live_object() {
        // An owner named so that the header seems to say schema crm; the statement grants on
        // a live function of public.
        let spoofed = entry(
            "FUNCTION f()",
            "ACL",
            "public; Owner: x; Type: ACL; Schema: crm",
            "GRANT ALL ON FUNCTION public.f() TO evil;",
        );
        let publication = [
            entry("p", "PUBLICATION", "-", "CREATE PUBLICATION p WITH (publish = 'insert');"),
            entry("p deals", "PUBLICATION TABLE", "crm", "ALTER PUBLICATION p ADD TABLE ONLY crm.deals;"),
        ]
        .concat();
        let pre = format!("{}{spoofed}{publication}", pre());
        let wanted = wanted(&["crm.deals"]);
        let map = [("crm".to_string(), "crm_old".to_string())];
        let part = select(&pre, &post(), &beside_live(&wanted, &map));
        assert!(!part.pre_data.contains("evil") && !part.pre_data.contains("PUBLICATION"), "{}", part.pre_data);
        // Objects of a schema not renamed that name a side object are not made, nor changed.
        let reaching = [
            entry("fmt(crm.deals)", "FUNCTION", "app", "CREATE FUNCTION app.fmt(d crm.deals) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;"),
            entry("###", "OPERATOR", "app", "CREATE OPERATOR app.### (FUNCTION = crm.f, LEFTARG = integer, RIGHTARG = integer);"),
            entry("d d_chk", "CHECK CONSTRAINT", "app", "ALTER DOMAIN app.d\n    ADD CONSTRAINT d_chk CHECK (((VALUE)::crm.deals IS NOT NULL)) NOT VALID;"),
            entry("notes", "TABLE", "crm", "CREATE TABLE crm.notes (\n    id integer,\n    f regproc DEFAULT 'crm.f'::regproc,\n    s regnamespace DEFAULT 'crm'::regnamespace\n);"),
        ]
        .concat();
        let pre_reaching = format!("{}{reaching}", self::pre());
        let wanted_notes = self::wanted(&["crm.deals", "crm.notes"]);
        let part = select(&pre_reaching, &post(), &beside_live(&wanted_notes, &map));
        for live in ["app.fmt", "app.###", "ALTER DOMAIN"] {
            assert!(!part.pre_data.contains(live), "{live}: {}", part.pre_data);
        }
        assert!(
            part.pre_data.contains("'\"crm_old\".f'::regproc") && part.pre_data.contains("'\"crm_old\"'::regnamespace"),
            "{}",
            part.pre_data
        );
        // A side object made with a reference to a live one would change it: left out.
        let changing = [
            entry("===", "OPERATOR", "crm", "CREATE OPERATOR crm.=== (FUNCTION = crm.f, LEFTARG = integer, RIGHTARG = integer, COMMUTATOR = OPERATOR(app.###));"),
            entry("child", "TABLE", "crm", "CREATE TABLE crm.child (\n    id integer\n)\nINHERITS (public.live);"),
            entry("deals live_fkey", "FK CONSTRAINT", "crm", "ALTER TABLE ONLY crm.deals\n    ADD CONSTRAINT live_fkey FOREIGN KEY (id) REFERENCES public.live(id);"),
            entry("g()", "FUNCTION", "crm", "CREATE FUNCTION crm.g() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT 1;\n SELECT 2;\nEND;"),
            entry("x", "TABLE", "crm", "SELECT pg_catalog.set_config('a', app.evil()::text, false);\nCREATE TABLE crm.x (id integer);"),
        ]
        .concat();
        let pre_changing = format!("{}{changing}", self::pre());
        let all_crm = |t: &TableName| t.schema == "crm";
        let part = select(&pre_changing, &post(), &beside_live(&all_crm, &map));
        for live in ["app.###", "public.live", "app.evil"] {
            assert!(!part.pre_data.contains(live), "{live}: {}", part.pre_data);
        }
        assert!(
            part.pre_data.contains("CREATE FUNCTION \"crm_old\".g()"),
            "a BEGIN ATOMIC body is one statement: {}",
            part.pre_data
        );
        assert!(part.pre_data.contains("CREATE FUNCTION \"crm_old\".f()"));
        // Into an empty database both are the snapshot's own.
        let part = select(&pre, &post(), &into_empty(&wanted));
        assert!(part.pre_data.contains("evil") && part.pre_data.contains("ADD TABLE ONLY crm.deals"));
    }

    #[test]
    fn foreign_keys_are_read_from_their_statements_and_partitions_stand_for_their_parent() {
        let post = [
            post(),
            entry("p p_fk", "FK CONSTRAINT", "crm", "ALTER TABLE crm.p\n    ADD CONSTRAINT p_fk FOREIGN KEY (id, \"Odd\") REFERENCES crm.deals(id, x) ON DELETE CASCADE;"),
        ]
        .concat();
        let keys = foreign_keys(&pre(), &post, &Partitions::of(&pre(), &post));
        let t = |name: &str| TableName { schema: "crm".into(), name: name.into() };
        assert_eq!(
            keys,
            [
                ForeignKey {
                    table: t("deals"),
                    columns: vec!["company_id".into()],
                    references: vec![t("companies")],
                    referenced: vec!["id".into()]
                },
                ForeignKey {
                    table: t("p1"),
                    columns: vec!["id".into(), "Odd".into()],
                    references: vec![t("deals")],
                    referenced: vec!["id".into(), "x".into()]
                },
            ]
        );
    }

    #[test]
    fn a_cycle_of_partitions_in_a_hostile_script_ends() {
        let pre = [
            entry("a", "TABLE ATTACH", "crm", "ALTER TABLE ONLY crm.a ATTACH PARTITION crm.b FOR VALUES IN (1);"),
            entry("b", "TABLE ATTACH", "crm", "ALTER TABLE ONLY crm.b ATTACH PARTITION crm.a FOR VALUES IN (2);"),
            entry("b", "TABLE ATTACH", "crm", "ALTER TABLE ONLY crm.b ATTACH PARTITION crm.c FOR VALUES IN (3);"),
        ]
        .concat();
        let partitions = Partitions::of(&pre, "");
        let t = |name: &str| TableName { schema: "crm".into(), name: name.into() };
        assert_eq!(partitions.leaves(&t("a")), [t("c")]);
    }

    #[test]
    fn a_table_holds_the_rows_of_the_tables_that_inherit_from_it() {
        let pre = [
            pre(),
            entry("base", "TABLE", "crm", "CREATE TABLE crm.base (\n    id integer,\n    inherits text\n);"),
            entry("other", "TABLE", "crm", "CREATE TABLE crm.other (\n    x integer\n);"),
            entry("child", "TABLE", "crm", "CREATE TABLE crm.child (\n    y integer\n)\nINHERITS (crm.base);"),
            entry("Grand", "TABLE", "crm", "CREATE TABLE crm.\"Grand\" (\n)\nINHERITS (crm.child, crm.other);"),
        ]
        .concat();
        let mut partitions = Partitions::of(&pre, &post());
        let t = |name: &str| TableName { schema: "crm".into(), name: name.into() };
        assert_eq!(partitions.with_heirs(&t("base")), [t("Grand"), t("base"), t("child")]);
        assert_eq!(partitions.with_heirs(&t("other")), [t("Grand"), t("other")]);
        assert_eq!(partitions.with_heirs(&t("Grand")), [t("Grand")]);
        // A partitioned table: itself (it holds no rows) and its partitions.
        assert_eq!(partitions.with_heirs(&t("p")), [t("p"), t("p1")]);
        // Links the target database did not confirm are not followed.
        partitions.unconfirmed.insert((t("child"), t("Grand")));
        partitions.unconfirmed.insert((t("p"), t("p1")));
        assert_eq!(partitions.with_heirs(&t("base")), [t("base"), t("child")]);
        assert_eq!(partitions.with_heirs(&t("other")), [t("Grand"), t("other")]);
        assert_eq!(partitions.with_heirs(&t("p")), [t("p")]);
        assert_eq!(partitions.leaves(&t("p")), [t("p")], "nor do foreign keys reach through them");
    }

    #[test]
    fn the_views_a_script_refreshes_are_found_in_its_statements() {
        let post = entry("v", "MATERIALIZED VIEW DATA", "crm", "REFRESH MATERIALIZED VIEW \"we\"\"ird\".v;")
            + &entry(
                "w",
                "COMMENT",
                "crm",
                "COMMENT ON MATERIALIZED VIEW crm.w IS 'REFRESH MATERIALIZED VIEW crm.x;';",
            );
        let views = refreshed_views(&post);
        assert_eq!(views, HashSet::from([TableName { schema: "we\"ird".into(), name: "v".into() }]));
    }

    #[test]
    fn quoted_and_odd_names_are_renamed_as_the_server_reads_them() {
        let map = [("We\"ird; --".to_string(), "side".to_string())];
        let sql = "CREATE TABLE \"We\"\"ird; --\".\"x\"\"; DROP TABLE y; --\" (a int DEFAULT nextval('\"We\"\"ird; --\".s'::regclass));";
        assert_eq!(
            rename(sql, &map),
            "CREATE TABLE \"side\".\"x\"\"; DROP TABLE y; --\" (a int DEFAULT nextval('\"side\".s'::regclass));"
        );
        // A bare name folds to lower case; a quoted one does not.
        let map = [("crm".to_string(), "c2".to_string())];
        assert_eq!(rename("SELECT CRM.t, \"CRM\".t, x.crm.y", &map), "SELECT \"c2\".t, \"CRM\".t, x.crm.y");
    }

    /// What pg_dump writes for a database's objects of every kind (copied from its output for
    /// one that has them), as a restore into an empty database runs it.
    fn pg_dump_kinds() -> (String, String) {
        let pre = [
            "SET statement_timeout = 0;\nSET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\
             SELECT pg_catalog.set_config('search_path', '', false);\nSET check_function_bodies = false;\n\
             SET xmloption = content;\nSET client_min_messages = warning;\nSET row_security = off;\n",
            &entry("crm", "SCHEMA", "-", "CREATE SCHEMA crm;"),
            &entry("crm", "SCHEMA", "-", "ALTER SCHEMA crm OWNER TO app;"),
            &entry("pg_trgm", "EXTENSION", "-", "CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;"),
            &entry("EXTENSION pg_trgm", "COMMENT", "-", "COMMENT ON EXTENSION pg_trgm IS 'text similarity';"),
            &entry("lo", "EXTENSION", "-", "CREATE EXTENSION IF NOT EXISTS lo WITH SCHEMA public;"),
            &entry("amcheck", "EXTENSION", "-", "CREATE EXTENSION IF NOT EXISTS amcheck WITH SCHEMA public;"),
            &entry("coll", "COLLATION", "public", "CREATE COLLATION public.coll (provider = libc, locale = 'C');"),
            &entry("CAST", "CAST", "-", "CREATE CAST (crm.status AS text) WITH INOUT AS ASSIGNMENT;"),
            &entry("conv", "CONVERSION", "public", "CREATE CONVERSION public.conv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;"),
            &entry("tsc", "TEXT SEARCH CONFIGURATION", "public", "CREATE TEXT SEARCH CONFIGURATION public.tsc (\n    PARSER = pg_catalog.\"default\" );\n\nALTER TEXT SEARCH CONFIGURATION public.tsc\n    ADD MAPPING FOR asciiword WITH english_stem;"),
            &entry("touch()", "FUNCTION", "crm", "CREATE FUNCTION crm.touch() RETURNS trigger\n    LANGUAGE plpgsql\n    AS $$ BEGIN NEW.at = now(); RETURN NEW; END $$;"),
            "SET default_tablespace = '';\n\nSET default_table_access_method = heap;\n\n",
            &entry("deals", "TABLE", "crm", "CREATE TABLE crm.deals (\n    id integer NOT NULL,\n    at timestamptz\n);"),
            &entry("deals_id_seq", "SEQUENCE", "crm", "CREATE SEQUENCE crm.deals_id_seq START WITH 1;"),
            &entry("deals id", "DEFAULT", "crm", "ALTER TABLE ONLY crm.deals ALTER COLUMN id SET DEFAULT nextval('crm.deals_id_seq'::regclass);"),
            &entry("invoices", "TABLE", "crm", "CREATE TABLE crm.invoices (\n    no text DEFAULT ('INV-'::text || nextval('crm.deals_id_seq'::regclass))\n);"),
            &entry("mv", "MATERIALIZED VIEW", "crm", "CREATE MATERIALIZED VIEW crm.mv AS\n SELECT count(*) AS n FROM crm.deals\n  WITH NO DATA;"),
            &entry("mv", "MATERIALIZED VIEW", "crm", "ALTER MATERIALIZED VIEW crm.mv OWNER TO app;"),
            &entry("v", "VIEW", "crm", "CREATE TABLE crm.v (\n    n bigint\n);"),
            &entry("v _RETURN", "RULE", "crm", "CREATE RULE \"_RETURN\" AS\n    ON SELECT TO crm.v DO INSTEAD  SELECT count(*) AS n\n   FROM crm.deals;"),
            &entry("srv", "SERVER", "-", "CREATE SERVER srv FOREIGN DATA WRAPPER w OPTIONS (\n    host 'x'\n);"),
            &entry("USER MAPPING postgres SERVER srv", "USER MAPPING", "-", "CREATE USER MAPPING FOR postgres SERVER srv OPTIONS (\n    \"user\" 'x'\n);"),
            &entry("4242", "BLOB", "-", "SELECT pg_catalog.lo_create('4242');"),
            &entry("LARGE OBJECT 4242", "BLOB", "-", "ALTER LARGE OBJECT 4242 OWNER TO app;"),
            &entry("TABLE deals", "ACL", "crm", "GRANT SELECT ON TABLE crm.deals TO PUBLIC;\nREVOKE ALL ON SCHEMA public FROM PUBLIC;"),
            &entry("DEFAULT PRIVILEGES", "DEFAULT ACL", "crm", "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA crm GRANT SELECT ON TABLES TO reader;"),
            &entry("pub", "PUBLICATION", "-", "CREATE PUBLICATION pub WITH (publish = 'insert, update, delete, truncate');"),
            &entry("pub deals", "PUBLICATION TABLE", "crm", "ALTER PUBLICATION pub ADD TABLE ONLY crm.deals;"),
            &entry("deals id", "SEQUENCE", "crm", "ALTER TABLE crm.deals ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (\n    SEQUENCE NAME crm.deals_id_seq2\n    START WITH 1\n);"),
            &entry("p", "TABLE", "crm", "CREATE TABLE crm.p (\n    at date,\n    k integer\n)\nPARTITION BY RANGE (at);"),
            &entry("p_2026", "TABLE", "crm", "CREATE TABLE crm.p_2026 (\n    at date,\n    k integer\n);"),
            &entry("p_2026", "TABLE ATTACH", "crm", "ALTER TABLE ONLY crm.p ATTACH PARTITION crm.p_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');"),
            &entry("p_min", "TABLE", "crm", "CREATE TABLE crm.p_min PARTITION OF crm.p FOR VALUES FROM (MINVALUE) TO ('2026-01-01');"),
            &entry("h", "TABLE", "crm", "CREATE TABLE crm.h (\n    k integer\n)\nPARTITION BY HASH (k);"),
            &entry("h0", "TABLE", "crm", "CREATE TABLE crm.h0 PARTITION OF crm.h FOR VALUES WITH (modulus 2, remainder 0);"),
            &entry("l", "TABLE", "crm", "CREATE TABLE crm.l (\n    k text\n)\nPARTITION BY LIST (k);"),
            &entry("l_a", "TABLE", "crm", "CREATE TABLE crm.l_a PARTITION OF crm.l FOR VALUES IN ('a', 'b');"),
            &entry("l_rest", "TABLE", "crm", "CREATE TABLE crm.l_rest PARTITION OF crm.l DEFAULT;"),
            &entry("n_neg", "TABLE", "crm", "CREATE TABLE crm.n_neg PARTITION OF crm.n FOR VALUES FROM ('-10', MINVALUE) TO (0, 1.5e3);"),
            &entry("b_t", "TABLE", "crm", "CREATE TABLE crm.b_t PARTITION OF crm.b FOR VALUES IN (true, NULL)\nPARTITION BY LIST (k);"),
            &entry("add", "TABLE", "crm", "CREATE TABLE crm.add (\n    add integer\n);\nALTER TABLE ONLY crm.add ALTER COLUMN add SET DEFAULT 0;\nALTER TABLE crm.add OWNER TO app;"),
            &entry("add", "CONSTRAINT", "crm", "ALTER TABLE ONLY crm.add\n    ADD CONSTRAINT add PRIMARY KEY (add);"),
            &entry("add", "FK CONSTRAINT", "crm", "ALTER TABLE ONLY crm.add\n    ADD CONSTRAINT add_fk FOREIGN KEY (add) REFERENCES crm.add(add);"),
            &entry("add", "TABLE", "crm", "ALTER TABLE ONLY crm.add CLUSTER ON add;\nALTER TABLE ONLY crm.add REPLICA IDENTITY USING INDEX add;"),
            &entry("type", "TABLE", "crm", "CREATE TABLE crm.kinds (\n    type text\n);\nALTER TABLE ONLY crm.kinds ALTER COLUMN type SET DEFAULT 'a';\nALTER TABLE ONLY crm.kinds ALTER COLUMN type SET STATISTICS 100;"),
        ]
        .concat();
        let post = [
            "SET statement_timeout = 0;\nSET standard_conforming_strings = on;\n",
            &entry("deals deals_pkey", "CONSTRAINT", "crm", "ALTER TABLE ONLY crm.deals\n    ADD CONSTRAINT deals_pkey PRIMARY KEY (id);"),
            &entry("deals t", "TRIGGER", "crm", "CREATE TRIGGER t BEFORE UPDATE ON crm.deals FOR EACH ROW EXECUTE FUNCTION crm.touch();"),
            &entry("images t", "TRIGGER", "crm", "CREATE TRIGGER t BEFORE UPDATE OR DELETE ON crm.images FOR EACH ROW EXECUTE FUNCTION public.lo_manage('raster');"),
            &entry("sub", "SUBSCRIPTION", "-", "CREATE SUBSCRIPTION sub CONNECTION 'host=x dbname=y' PUBLICATION pub WITH (connect = false, slot_name = 'sub');"),
            &entry("sub", "SUBSCRIPTION", "-", "ALTER SUBSCRIPTION sub OWNER TO postgres;"),
            &entry("st", "STATISTICS", "crm", "CREATE STATISTICS crm.st ON id, at FROM crm.deals;"),
            &entry("mv", "MATERIALIZED VIEW DATA", "crm", "REFRESH MATERIALIZED VIEW crm.mv;"),
        ]
        .concat();
        (pre, post)
    }

    #[test]
    fn into_an_empty_database_what_pg_dump_writes_runs_and_trigger_functions_are_no_code_of_concern() {
        let (pre, post) = pg_dump_kinds();
        let vetting = vet(&pre, &post);
        assert!(vetting.refused.is_empty(), "{:?}", vetting.refused);
        // A subscription (it holds a connection the snapshot chose) is all that counts.
        assert_eq!(vetting.runs_code.iter().collect::<Vec<_>>(), ["subscription sub"]);
        // The view refreshed, as its owner.
        assert_eq!(vetting.refreshed, [("crm.mv".to_string(), Some("app".to_string()))]);
        assert_eq!(vetting.owners.get("crm.mv").map(String::as_str), Some("app"));
        // A database in another encoding: pg_dump says so, and its bytes read as the lexer reads them.
        let latin1 = pre.replace("SET client_encoding = 'UTF8';", "SET client_encoding = 'LATIN1';");
        assert!(vet(&latin1, &post).refused.is_empty());
    }

    #[test]
    fn into_an_empty_database_a_statement_pg_dump_does_not_write_is_refused() {
        let (pre, post) = pg_dump_kinds();
        let attacks = [
            "COPY (SELECT 1) TO PROGRAM 'id > /tmp/x';",
            "CREATE ROLE evil SUPERUSER LOGIN;",
            "CREATE USER evil;",
            "ALTER ROLE app SUPERUSER;",
            "ALTER USER app WITH PASSWORD 'x';",
            "ALTER SYSTEM SET shared_preload_libraries = 'x';",
            "ALTER DATABASE postgres OWNER TO evil;",
            "CREATE DATABASE other;",
            "CREATE TABLESPACE t LOCATION '/tmp';",
            "DO $$ BEGIN PERFORM 1; END $$;",
            "SELECT pg_catalog.set_config('role', 'app', false);",
            "SELECT pg_catalog.lo_create('4242'), pg_catalog.lo_unlink(1);",
            "SELECT pg_catalog.lo_import('/etc/passwd');",
            "SET ROLE app;",
            "SET SESSION AUTHORIZATION app;",
            "SET standard_conforming_strings = off;",
            "RESET ALL;",
            "COMMIT;",
            "END;",
            "BEGIN;",
            "ROLLBACK;",
            "SAVEPOINT s;",
            "GRANT pg_execute_server_program TO app;",
            "GRANT CONNECT ON DATABASE postgres TO evil;",
            "GRANT SET ON PARAMETER log_statement TO evil;",
            "CREATE SUBSCRIPTION s CONNECTION 'host=evil' PUBLICATION p;",
            "ALTER SUBSCRIPTION sub ENABLE;",
            "CREATE TABLE crm.x AS SELECT pg_catalog.pg_read_file('/etc/passwd');",
            "CREATE TEMP TABLE x (a int);",
            "CREATE MATERIALIZED VIEW crm.w AS SELECT 1 AS one;",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_catalog.pg_read_file('/etc/passwd') IS NOT NULL));",
            "CREATE VIEW crm.files AS SELECT pg_ls_dir('/') AS f;",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_catalog.lo_export(1, '/tmp/x') > 0));",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_catalog.lo_import('/etc/passwd') > 0));",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_terminate_backend(1)));",
            "ALTER TABLE crm.deals ADD CONSTRAINT q CHECK ((query_to_xml('DELETE FROM x', false, false, '') IS NOT NULL));",
            "DROP TABLE crm.deals;",
            "TRUNCATE crm.deals;",
            "INSERT INTO crm.deals VALUES (1);",
            "LOAD 'plpython3u';",
            "ANALYZE;",
            "IMPORT FOREIGN SCHEMA public FROM SERVER srv INTO crm;",
            "CREATE TABLE crm.u (U&\"\\0061\" int);",
            "WITH x AS (DELETE FROM crm.deals) SELECT 1;",
            "CREATE LOCAL TEMPORARY TABLE tt AS SELECT 1;",
            "CREATE GLOBAL TEMPORARY TABLE tt2 (x integer);",
            "COMMENT ON ROLE postgres IS 'x';",
            "COMMENT ON DATABASE postgres IS 'x';",
            "SECURITY LABEL FOR p ON ROLE postgres IS 'x';",
            "GRANT ALL ON ALL FUNCTIONS IN SCHEMA pg_catalog TO PUBLIC;",
            "GRANT SELECT ON TABLE pg_catalog.pg_authid TO PUBLIC;",
            "ALTER FUNCTION pg_catalog.pg_cancel_backend(integer) SECURITY DEFINER;",
            "CREATE FUNCTION pg_catalog.f() RETURNS integer LANGUAGE sql AS 'SELECT 1';",
            "CREATE SCHEMA x CREATE TRIGGER early BEFORE INSERT ON crm.deals FOR EACH ROW EXECUTE FUNCTION crm.touch();",
            "SET client_encoding = 'SJIS';",
            "ALTER TABLE crm.deals ADD COLUMN a text GENERATED ALWAYS AS (pg_stat_get_backend_activity(1)) STORED;",
            "CREATE DOMAIN pg_temp.trigger AS integer;",
            "CREATE FUNCTION crm.f() RETURNS pg_temp_3.t LANGUAGE sql AS 'SELECT 1';",
            "ALTER MATERIALIZED VIEW crm.mv RENAME TO mv2;",
            "ALTER TABLE crm.deals SET SCHEMA public;",
            "ALTER TABLE crm.deals ADD COLUMN z integer DEFAULT pg_catalog.pg_sleep(1000);",
            "GRANT EXECUTE ON FUNCTION lo_export TO PUBLIC;",
            "GRANT SELECT ON TABLE pg_authid TO PUBLIC;",
            "GRANT SELECT ON pg_authid TO PUBLIC;",
            "GRANT SELECT ON TABLE crm.deals, pg_authid TO PUBLIC;",
            "GRANT SELECT ON TABLE db.pg_catalog.pg_authid TO PUBLIC;",
            "ALTER FUNCTION lo_export SECURITY DEFINER;",
            "COMMENT ON TABLE pg_authid IS 'x';",
            "ALTER MATERIALIZED VIEW crm.mv OWNER TO CURRENT_USER, OWNER TO CURRENT_USER;",
            "ALTER TABLE crm.deals OWNER TO postgres, ALTER COLUMN id SET STATISTICS 10;",
            "ALTER FUNCTION lo_export(crm.stage) SECURITY DEFINER;",
            "COMMENT ON FUNCTION lo_export(crm.stage) IS 'x';",
            "ALTER OPERATOR = (crm.stage, crm.stage) OWNER TO app;",
            "COMMENT ON TRIGGER t ON pg_authid IS 'x';",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA crm, pg_catalog TO PUBLIC;",
            "GRANT USAGE, CREATE ON SCHEMA crm, pg_catalog TO PUBLIC;",
            "GRANT USAGE, CREATE ON SCHEMA crm, information_schema TO PUBLIC;",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA crm, pg_catalog GRANT EXECUTE ON FUNCTIONS TO PUBLIC;",
            "ALTER FUNCTION current_setting(crm.deals.id%TYPE) OWNER TO app;",
            "ALTER TABLE crm.deals ADD COLUMN leak text DEFAULT pg_catalog.current_setting('config_file');",
            "ALTER TABLE crm.deals ALTER COLUMN id TYPE text USING pg_catalog.current_setting('hba_file');",
            // An escape string goes on over lines with its backslashes: `'\' '` is one
            // literal to the server, and the call between the quotes runs.
            "ALTER TABLE crm.deals ADD CONSTRAINT f CHECK ((pg_catalog.length(E'x'\n'\\' ' || pg_catalog.lo_export(1, $p$/tmp/x$p$)::text || ' -- '\n) > 0));",
            "COMMENT ON TABLE crm.deals IS E'a\\nb';",
            // Every object of a grant's list, and objects named without their arguments.
            "GRANT SELECT ON TABLE crm.deals, pg_catalog.pg_authid TO PUBLIC;",
            "GRANT EXECUTE ON FUNCTION crm.touch(), pg_catalog.lo_export, pg_catalog.pg_reload_conf TO PUBLIC;",
            "REVOKE ALL ON FUNCTION crm.touch(), pg_catalog.now() FROM PUBLIC;",
            // The server's languages and access methods; an extension's schema and members.
            "ALTER LANGUAGE internal OWNER TO app;",
            "REVOKE USAGE ON LANGUAGE sql FROM PUBLIC;",
            "COMMENT ON LANGUAGE c IS 'x';",
            "COMMENT ON ACCESS METHOD btree IS 'x';",
            "CREATE EXTENSION hstore SCHEMA pg_catalog;",
            "CREATE CAST (pg_catalog.bytea AS pg_catalog.text) WITH INOUT;",
            "CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA pg_catalog;",
            "ALTER EXTENSION hstore ADD FUNCTION pg_catalog.lo_export(oid, text);",
            "ALTER TYPE public.hstore SET (ANALYZE = pg_catalog.array_typanalyze);",
            "ALTER TABLE ONLY crm.deals ADD COLUMN z integer DEFAULT 1;",
            "ALTER TABLE crm.deals ADD z integer;",
            "CREATE TABLE crm.p1 PARTITION OF crm.p FOR VALUES IN (pg_catalog.length('x'));",
            "ALTER TABLE ONLY crm.p ATTACH PARTITION crm.p2 FOR VALUES FROM (crm.f()) TO (MAXVALUE);",
            // A function in field notation, `(expr).name`, and what else a bound could compute.
            "CREATE TABLE crm.p3 PARTITION OF crm.p FOR VALUES IN (((('/etc/hostname'::text).pg_read_file)));",
            "CREATE TABLE crm.p4 PARTITION OF crm.p FOR VALUES IN (('a' || 'b'));",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((((body)::text).pg_read_file) <> '');",
            "ALTER DOMAIN public.lo ADD CONSTRAINT c CHECK ((((VALUE)::text).current_setting) <> '');",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((((ARRAY['/etc/hostname'])[1].pg_read_file) <> ''));",
            "ALTER TABLE crm.deals ALTER COLUMN body TYPE character varying USING ((ARRAY['/etc/hostname'])[1].pg_read_file);",
            "ALTER TABLE ONLY crm.deals ALTER body SET DATA TYPE text;",
            "ALTER TABLE ONLY crm.deals CLUSTER ON add, ADD z integer DEFAULT 1;",
            "ALTER TABLE ONLY crm.deals ADD IF NOT EXISTS add integer;",
            "ALTER TABLE crm.deals ALTER body TYPE text;",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_catalog.current_setting('{\"x.\": \"data_directory\"}'::jsonb ->> 'x.') <> ''));",
            "ALTER TABLE crm.deals ADD CONSTRAINT c CHECK ((pg_catalog.pg_wal_replay_pause() IS NULL));",
            "ALTER TABLE crm.deals ADD COLUMN leak text DEFAULT pg_catalog.pg_config()::text;",
        ];
        for attack in attacks {
            let forged = format!("{pre}{}", entry("x", "COMMENT", "crm", attack));
            let vetting = vet(&forged, &post);
            assert_eq!(vetting.refused.len(), 1, "{attack}: {:?}", vetting.refused);
            // In the post-data too.
            let forged = format!("{post}{}", entry("x", "COMMENT", "crm", attack));
            assert_eq!(vet(&pre, &forged).refused.len(), 1, "{attack} (post-data)");
        }
        // Said with how it starts, on one line, control characters escaped.
        let forged = format!("{pre}{}", entry("x", "COMMENT", "crm", "COPY (SELECT 1) TO PROGRAM\n'id';"));
        assert_eq!(vet(&forged, &post).refused, ["COPY statement (COPY (SELECT 1) TO PROGRAM\\n'id')"]);
    }

    #[test]
    fn into_an_empty_database_routines_operators_languages_and_extensions_that_reach_out_are_code() {
        let (pre, post) = pg_dump_kinds();
        let code = [
            ("CREATE FUNCTION crm.f(integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT $1';", "crm.f"),
            ("CREATE FUNCTION crm.g(a integer) RETURNS integer LANGUAGE sql BEGIN ATOMIC SELECT a; END;", "crm.g"),
            ("CREATE PROCEDURE crm.p() LANGUAGE plpgsql AS $$ BEGIN END $$;", "crm.p"),
            ("CREATE AGGREGATE crm.agg(integer) (SFUNC = int4pl, STYPE = integer);", "crm.agg"),
            ("CREATE OPERATOR crm.=~= (FUNCTION = crm.f, LEFTARG = text, RIGHTARG = text);", "crm.=~="),
            ("CREATE FUNCTION crm.et() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;", "crm.et"),
            // A trigger function in C loads a library as it is made, and may be called as any
            // function; so may one in `internal`, under a name of the snapshot's.
            ("CREATE FUNCTION crm.sys(cstring) RETURNS trigger LANGUAGE c AS '/lib/libc.so.6', 'system';", "crm.sys"),
            (
                "CREATE FUNCTION crm.stamp(oid, text) RETURNS trigger LANGUAGE $$internal$$ AS $$be_lo_export$$;",
                "crm.stamp",
            ),
            (
                "CREATE FUNCTION crm.read(text) RETURNS trigger LANGUAGE $x$c$x$ AS '$libdir/dblink', 'dblink_exec';",
                "crm.read",
            ),
            ("CREATE EXTENSION IF NOT EXISTS dblink WITH SCHEMA public;", "extension dblink"),
            ("CREATE EXTENSION postgres_fdw;", "extension postgres_fdw"),
            ("CREATE OR REPLACE PROCEDURAL LANGUAGE plpython3u;", "language plpython3u"),
            (
                "CREATE TRIGGER early BEFORE INSERT ON crm.deals FOR EACH ROW EXECUTE FUNCTION crm.touch();",
                "trigger early",
            ),
            // No RETURNS clause (an OUT parameter) and `returns trigger` in the body: no trigger function.
            (
                "CREATE FUNCTION crm.poke(OUT r integer) LANGUAGE sql BEGIN ATOMIC SELECT returns trigger FROM (SELECT 1 AS returns) s; END;",
                "crm.poke",
            ),
            (
                "CREATE CAST (character varying AS oid) WITH FUNCTION pg_catalog.pg_replication_origin_create AS ASSIGNMENT;",
                "a cast (character varying AS oid)",
            ),
            ("CREATE EXTENSION IF NOT EXISTS tablefunc WITH SCHEMA public;", "extension tablefunc"),
            ("CREATE EXTENSION IF NOT EXISTS earthdistance CASCADE;", "extension earthdistance"),
            ("CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION crm.touch();", "event trigger et"),
            // The server's C functions pointed at what they were not written for.
            ("CREATE CAST (bytea AS text) WITHOUT FUNCTION AS IMPLICIT;", "a cast (bytea AS text)"),
            (
                "CREATE TEXT SEARCH TEMPLATE crm.t (INIT = pg_catalog.dsimple_init, LEXIZE = pg_catalog.dsimple_lexize);",
                "text search template crm.t",
            ),
            (
                "CREATE TEXT SEARCH PARSER crm.p (START = prsd_start, GETTOKEN = prsd_nexttoken, END = prsd_end, LEXTYPES = prsd_lextype);",
                "text search parser crm.p",
            ),
            (
                "ALTER OPERATOR FAMILY crm.f USING btree ADD FUNCTION 1 (integer, integer) pg_catalog.btint4cmp(integer, integer);",
                "operator family crm.f",
            ),
        ];
        for (statement, named) in code {
            let forged = format!("{pre}{}", entry("x", "FUNCTION", "crm", statement));
            let vetting = vet(&forged, &post);
            assert!(vetting.refused.is_empty(), "{statement}: {:?}", vetting.refused);
            let code: Vec<&String> = vetting.runs_code.iter().filter(|c| *c != "subscription sub").collect();
            assert_eq!(code, [named], "{statement}");
        }
        // A trigger in the post-data fires for no row the restore loads.
        let early = code.iter().find(|(_, named)| *named == "trigger early").unwrap().0;
        let late = format!("{post}{}", entry("x", "TRIGGER", "crm", early));
        assert_eq!(vet(&pre, &late).runs_code.len(), 1);
    }

    #[test]
    fn into_an_empty_database_a_refresh_runs_as_the_owner_the_script_gave_by_then() {
        let (pre, post) = pg_dump_kinds();
        let refreshed = |pre: &str, post: &str| vet(pre, post).refreshed;
        let app = || Some("app".to_string());
        assert_eq!(refreshed(&pre, &post), [("crm.mv".to_string(), app())]);
        // The restoring role's: CURRENT_USER and its like, or the view made again after.
        for owner in ["CURRENT_USER", "session_user", "CURRENT_ROLE"] {
            let forged = format!(
                "{pre}{}",
                entry("x", "ACL", "crm", &format!("ALTER MATERIALIZED VIEW crm.mv OWNER TO {owner};"))
            );
            assert_eq!(refreshed(&forged, &post), [("crm.mv".to_string(), None)], "{owner}");
        }
        let again = "CREATE MATERIALIZED VIEW crm.mv AS SELECT 1 AS one WITH NO DATA;";
        assert_eq!(
            refreshed(&format!("{pre}{}", entry("x", "MATERIALIZED VIEW", "crm", again)), &post),
            [("crm.mv".to_string(), None)]
        );
        // An owner given after the refresh does not count for it.
        let after = format!("{post}{}", entry("x", "ACL", "crm", "ALTER MATERIALIZED VIEW crm.mv OWNER TO postgres;"));
        assert_eq!(refreshed(&pre, &after), [("crm.mv".to_string(), app())]);
        assert_eq!(vet(&pre, &after).owners.get("crm.mv").map(String::as_str), Some("postgres"));
        // Views, whose queries a refresh runs as their owners.
        let view = "CREATE VIEW crm.v AS SELECT 1 AS one;";
        assert!(vet(&format!("{pre}{}", entry("v", "VIEW", "crm", view)), &post).views.contains("crm.v"));
        // A rule `ON SELECT` makes its table a view.
        let rule = "CREATE RULE \"_RETURN\" AS ON SELECT TO crm.t DO INSTEAD SELECT 1 AS one;";
        assert!(vet(&format!("{pre}{}", entry("t", "RULE", "crm", rule)), &post).views.contains("crm.t"));
        // A column, or a table, called rename is no renaming.
        let named = "CREATE TABLE crm.rename (rename integer);\nALTER TABLE ONLY crm.rename ALTER COLUMN rename SET DEFAULT 1;\n\
                     ALTER SEQUENCE crm.deals_id_seq OWNED BY crm.rename.rename;\nALTER TABLE crm.rename OWNER TO app;";
        assert!(vet(&format!("{pre}{}", entry("rename", "TABLE", "crm", named)), &post).refused.is_empty());
        // An application's own setting in a default (a tenant, in a multi-tenant schema).
        let tenant = "ALTER TABLE ONLY crm.deals ALTER COLUMN id SET DEFAULT (pg_catalog.current_setting('app.tenant'::text))::integer;";
        assert!(vet(&format!("{pre}{}", entry("deals id", "DEFAULT", "crm", tenant)), &post).refused.is_empty());
        // A schema called temp is no temporary one.
        let temp =
            format!("{pre}{}", entry("temp", "SCHEMA", "-", "CREATE SCHEMA temp;\nCREATE TABLE temp.x (a integer);"));
        assert!(vet(&temp, &post).refused.is_empty());
    }
}
