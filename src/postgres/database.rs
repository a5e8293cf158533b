//! The database itself, for `restore --create`: its owner, privileges, settings, connection
//! limit and comment, given to the database a restore made, as `pg_restore --create` gives
//! them from pg_dump's `CREATE DATABASE` entry.

use super::load::Server;
use super::script::LeaveOut;
use super::{quote_ident, quote_literal};
use crate::error::{Error, Result};
use crate::repo::{DatabaseObject, DatabaseSetting};

/// Settings whose value is a list of names, each quoted on its own (PostgreSQL's
/// `GUC_LIST_QUOTE`, as pg_dump lists them): `search_path` set to the one literal
/// `'crm, public'` would name a single schema "crm, public".
const LIST_SETTINGS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// The roles the database itself needs on the target for `--create`: its owner (unless
/// `--no-owner`), its grantees (unless `--no-acl`), the roles it has settings for.
pub fn roles_needed(object: &DatabaseObject, leave_out: LeaveOut) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    if !leave_out.owners {
        names.push(&object.owner);
    }
    if !leave_out.privileges {
        names.extend(object.privileges.iter().filter_map(|p| p.grantee.as_deref()));
    }
    names.extend(object.settings.iter().filter_map(|s| s.role.as_deref()));
    names.sort_unstable();
    names.dedup();
    names
}

/// The statements that give database `name` what `object` records, in order: owner,
/// privileges (all revoked first, then granted as recorded: a source that took `CONNECT`
/// from `PUBLIC` must not come back open), settings, connection limit. Owner and privileges
/// as `leave_out` says. The comment is given when the database takes its name.
pub fn statements(name: &str, object: &DatabaseObject, leave_out: LeaveOut) -> Vec<String> {
    let database = quote_ident(name);
    let mut sql = Vec::new();
    if !leave_out.owners {
        sql.push(format!("ALTER DATABASE {database} OWNER TO {}", quote_ident(&object.owner)));
    }
    if !leave_out.privileges {
        sql.push(format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"));
        if !leave_out.owners {
            sql.push(format!("REVOKE ALL ON DATABASE {database} FROM {}", quote_ident(&object.owner)));
        }
        for privilege in &object.privileges {
            let grantee = privilege.grantee.as_deref().map_or_else(|| "PUBLIC".to_string(), quote_ident);
            let option = if privilege.grantable { " WITH GRANT OPTION" } else { "" };
            // The catalog has no other; anything else is not pasted into SQL.
            let what @ ("CONNECT" | "CREATE" | "TEMPORARY") = privilege.privilege.as_str() else { continue };
            sql.push(format!("GRANT {what} ON DATABASE {database} TO {grantee}{option}"));
        }
    }
    for setting in &object.settings {
        let scope = match &setting.role {
            Some(role) => format!("ALTER ROLE {} IN DATABASE {database}", quote_ident(role)),
            None => format!("ALTER DATABASE {database}"),
        };
        sql.push(format!("{scope} SET {} TO {}", quote_ident(&setting.name), value(setting)));
    }
    if object.connection_limit != -1 {
        sql.push(format!("ALTER DATABASE {database} CONNECTION LIMIT {}", object.connection_limit));
    }
    sql
}

/// A setting's value as SQL: one literal, or for a list setting one literal per element.
fn value(setting: &DatabaseSetting) -> String {
    if !LIST_SETTINGS.contains(&setting.name.as_str()) {
        return quote_literal(&setting.value);
    }
    list_elements(&setting.value).iter().map(|element| quote_literal(element)).collect::<Vec<_>>().join(", ")
}

/// The elements of a list setting as the catalog writes it: separated by commas, each
/// double-quoted when it needs to be (a quote inside doubled).
fn list_elements(text: &str) -> Vec<String> {
    let mut elements = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut element = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                element.push(c);
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                element.push(c);
                chars.next();
            }
            element.truncate(element.trim_end().len());
        }
        elements.push(element);
        if chars.next().is_none() {
            return elements;
        }
    }
}

impl Server {
    /// Gives database `name` what `object` records ([`statements`]), in one transaction.
    pub async fn give(&self, name: &str, object: &DatabaseObject, leave_out: LeaveOut) -> Result<()> {
        let client = self.client();
        client.batch_execute("BEGIN").await?;
        for statement in statements(name, object, leave_out) {
            if let Err(error) = client.batch_execute(&statement).await {
                let _ = client.batch_execute("ROLLBACK").await;
                let hint = if statement.contains(" OWNER TO ") {
                    " (--no-owner leaves the database to the restoring role)"
                } else if statement.contains("GRANT ") || statement.contains("REVOKE ") {
                    " (--no-acl leaves its privileges as a new database's)"
                } else {
                    ""
                };
                return Err(Error::Invalid(format!(
                    "giving the new database what the source's had: {}{hint}",
                    crate::error::postgres_message(&error)
                )));
            }
        }
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::DatabasePrivilege;

    #[test]
    fn list_settings_are_split_into_their_elements() {
        assert_eq!(list_elements("crm, public"), ["crm", "public"]);
        assert_eq!(list_elements("\"$user\", \"My, \"\"odd\"\" schema\",x"), ["$user", "My, \"odd\" schema", "x"]);
        assert_eq!(list_elements("\"\""), [""]);
        assert_eq!(list_elements(""), [""]);
    }

    #[test]
    fn statements_quote_every_name_and_value() {
        let object = DatabaseObject {
            owner: "app\"owner".into(),
            privileges: vec![
                DatabasePrivilege { grantee: None, privilege: "TEMPORARY".into(), grantable: false },
                DatabasePrivilege { grantee: Some("app".into()), privilege: "CONNECT".into(), grantable: true },
                DatabasePrivilege { grantee: Some("x".into()), privilege: "ALL; DROP ROLE y".into(), grantable: false },
            ],
            settings: vec![
                DatabaseSetting { role: None, name: "search_path".into(), value: "crm, \"a b\"".into() },
                DatabaseSetting { role: Some("app".into()), name: "app.secret".into(), value: "it's".into() },
            ],
            connection_limit: 20,
            comment: None,
        };
        let all = LeaveOut::default();
        assert_eq!(
            statements("crm", &object, all),
            [
                r#"ALTER DATABASE "crm" OWNER TO "app""owner""#,
                r#"REVOKE ALL ON DATABASE "crm" FROM PUBLIC"#,
                r#"REVOKE ALL ON DATABASE "crm" FROM "app""owner""#,
                r#"GRANT TEMPORARY ON DATABASE "crm" TO PUBLIC"#,
                r#"GRANT CONNECT ON DATABASE "crm" TO "app" WITH GRANT OPTION"#,
                r#"ALTER DATABASE "crm" SET "search_path" TO 'crm', 'a b'"#,
                r#"ALTER ROLE "app" IN DATABASE "crm" SET "app.secret" TO 'it''s'"#,
                r#"ALTER DATABASE "crm" CONNECTION LIMIT 20"#,
            ]
        );
        let bare = statements("crm", &object, LeaveOut { owners: true, privileges: true });
        assert_eq!(bare.len(), 3, "{bare:?}");
        assert_eq!(roles_needed(&object, all), ["app", "app\"owner", "x"]);
        assert_eq!(roles_needed(&object, LeaveOut { owners: true, privileges: true }), ["app"]);
    }
}
