//! The database itself, for `restore --create`: its owner, privileges, settings, connection
//! limit and comment, given to the database a restore made, as `pg_restore --create` gives
//! them from pg_dump's `CREATE DATABASE` entry.

use super::load::Server;
use super::script::LeaveOut;
use super::{quote_ident, quote_literal};
use crate::error::{Error, Result};
use crate::repo::{DatabaseObject, DatabasePrivilege, DatabaseSetting, RoleRecord};

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
        names.extend(granted(object, leave_out).filter_map(|p| p.grantee.as_deref()));
    }
    names.extend(object.settings.iter().filter_map(|s| s.role.as_deref()));
    names.sort_unstable();
    names.dedup();
    names
}

/// The privileges given: all but, under `--no-owner`, the source owner's own (the database is
/// the restoring role's then, and the source owner just another role).
fn granted(object: &DatabaseObject, leave_out: LeaveOut) -> impl Iterator<Item = &DatabasePrivilege> {
    object.privileges.iter().filter(move |p| !(leave_out.owners && p.grantee.as_deref() == Some(&object.owner)))
}

/// The statements that give database `name` what `object` records, in order: owner,
/// privileges (all revoked first, then granted as recorded: a source that took `CONNECT`
/// from `PUBLIC` must not come back open), settings, connection limit. Owner and privileges
/// as `leave_out` says. The comment is given when the database takes its name.
pub fn statements(name: &str, object: &DatabaseObject, leave_out: LeaveOut) -> Vec<String> {
    given(name, object, leave_out).into_iter().map(|given| given.sql).collect()
}

/// One of [`statements`], with what it gives.
struct Given {
    sql: String,
    /// For a setting, the same without its value: a harmless setting made in the same place,
    /// then this one reset, which the server checks as it checks a value given (the name, the
    /// role's right to set it, whether it may be set there) but for the value. A statement the
    /// server refuses goes to its log, text and all (`log_min_error_statement`), and a value may
    /// be a secret (PostgREST's `app.jwt_secret`, which only a superuser may set).
    probe: Option<String>,
    /// The setting it gives: its place in `object.settings`.
    setting: Option<usize>,
}

fn given(name: &str, object: &DatabaseObject, leave_out: LeaveOut) -> Vec<Given> {
    let database = quote_ident(name);
    let mut sql = Vec::new();
    let mut give = |text: String, setting: Option<usize>, probe: Option<String>| {
        sql.push(Given { sql: text, probe, setting });
    };
    if !leave_out.owners {
        give(format!("ALTER DATABASE {database} OWNER TO {}", quote_ident(&object.owner)), None, None);
    }
    if !leave_out.privileges {
        give(format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"), None, None);
        if !leave_out.owners {
            let owner = &object.owner;
            give(format!("REVOKE ALL ON DATABASE {database} FROM {}", quote_ident(owner)), None, None);
        }
        for privilege in granted(object, leave_out) {
            let grantee = privilege.grantee.as_deref().map_or_else(|| "PUBLIC".to_string(), quote_ident);
            let option = if privilege.grantable { " WITH GRANT OPTION" } else { "" };
            // The catalog has no other; anything else is not pasted into SQL.
            let what @ ("CONNECT" | "CREATE" | "TEMPORARY") = privilege.privilege.as_str() else { continue };
            let text = format!("GRANT {what} ON DATABASE {database} TO {grantee}{option}");
            give(text, None, None);
        }
    }
    for (place, setting) in object.settings.iter().enumerate() {
        let scope = match &setting.role {
            Some(role) => format!("ALTER ROLE {} IN DATABASE {database}", quote_ident(role)),
            None => format!("ALTER DATABASE {database}"),
        };
        let text = format!("{scope} SET {} TO {}", quote_ident(&setting.name), value(setting));
        let probe = format!("{scope} SET application_name TO 'crmvault'; {scope} RESET {}", quote_ident(&setting.name));
        give(text, Some(place), Some(probe));
    }
    if object.connection_limit != -1 {
        give(format!("ALTER DATABASE {database} CONNECTION LIMIT {}", object.connection_limit), None, None);
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

/// The comment on a database `restore --create` finished under its loading name because the
/// name it was for was taken meanwhile.
pub const KEPT_MARK: &str =
    "crmvault restore --create: complete, kept under this name because the name it was for was taken meanwhile";

/// How `restore --create` finishes: what the new database gets before it takes its name.
pub struct Finish<'a> {
    /// The database loaded, under its loading name.
    pub loading: &'a str,
    /// The name it takes (`None`: it keeps its loading name, given the rest).
    pub name: Option<&'a str>,
    /// What the source database itself had (none: a snapshot from before it was recorded).
    pub object: Option<&'a DatabaseObject>,
    /// `--no-owner`, `--no-acl`.
    pub leave_out: LeaveOut,
    /// `--role`: the owner, privileges and settings are given as this role.
    pub role: Option<&'a str>,
}

impl Server {
    /// Gives the loaded database what the source's had ([`statements`]), opens it as a new
    /// database is when there is nothing to give (or `--no-acl`), renames it into place and
    /// puts the source's comment on it instead of the loading mark: one transaction, so the
    /// name holds a finished database or none. Sessions that just closed may still hold the
    /// database for a moment: the transaction is tried again for up to ten seconds.
    pub async fn finish_creating(&self, finish: &Finish<'_>) -> Result<()> {
        let client = self.client();
        let object = match finish.object {
            Some(object) => Some(self.without_superusers_settings(object).await?),
            None => None,
        };
        let (loading, name) = (quote_ident(finish.loading), quote_ident(finish.name.unwrap_or(finish.loading)));
        let rename = match finish.name {
            Some(_) => format!("ALTER DATABASE {loading} RENAME TO {name}; "),
            None => String::new(),
        };
        let mut given = match &object {
            Some(object) => given(finish.loading, object, finish.leave_out),
            None => Vec::new(),
        };
        if object.is_none() || finish.leave_out.privileges {
            let sql = format!("GRANT CONNECT, TEMPORARY ON DATABASE {loading} TO PUBLIC");
            given.push(Given { sql, probe: None, setting: None });
        }
        // Kept under its loading name, it says so (the source's comment could be the mark a
        // later `restore --create` drops a leftover by).
        let comment = match finish.name {
            Some(_) => object.as_ref().and_then(|o| o.comment.as_deref()).map_or_else(|| "NULL".into(), quote_literal),
            None => quote_literal(KEPT_MARK),
        };
        let mut tries = 0;
        loop {
            client.batch_execute("BEGIN").await?;
            if let Some(role) = finish.role {
                client.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(role))).await?;
            }
            for statement in &given {
                // Probed as in the try: what changed since (a right revoked during the load) is
                // refused without the value.
                let failed = match give(client, statement).await {
                    Ok(None) => continue,
                    Ok(Some(error)) => {
                        let setting =
                            statement.setting.zip(object.as_ref()).map(|(at, o)| o.settings[at].name.as_str());
                        refused(&statement.sql, setting, &error)
                    }
                    Err(error) => error,
                };
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed);
            }
            let renamed =
                client.batch_execute(&format!("RESET ROLE; {rename}COMMENT ON DATABASE {name} IS {comment}")).await;
            match renamed {
                Ok(()) => {
                    client.batch_execute("COMMIT").await?;
                    return Ok(());
                }
                Err(error) if tries < 100 && error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                    client.batch_execute("ROLLBACK").await?;
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(error.into());
                }
            }
        }
    }

    /// Tries on the new database, still empty under its loading name, what
    /// [`Server::finish_creating`] will give it, as `role`, and undoes it: so that the server's
    /// refusal comes before the load, not after it. An owner or a privilege refused is an error
    /// now (`--no-owner`, `--no-acl` are the ways out). A setting refused (one only a superuser
    /// may set, one this server does not know, a value it does not take) is left out of `object`,
    /// each said in the warnings returned: a database without it beats no database at 3 a.m.
    /// The roles `--create-roles` will make as the load starts (`to_make`) are made first, as the
    /// load makes them, and undone with the rest: what the finish gives them is tried too. The
    /// settings of superusers here are left out first, as the finish leaves them.
    pub async fn try_giving(
        &self,
        loading: &str,
        object: &mut DatabaseObject,
        (leave_out, role): (LeaveOut, Option<&str>),
        to_make: &[&RoleRecord],
    ) -> Result<Vec<String>> {
        *object = self.without_superusers_settings(object).await?;
        let client = self.client();
        client.batch_execute("BEGIN").await?;
        // Whatever happens, nothing tried stays: the roles made, the statements given.
        let tried = self.try_in_transaction(loading, object, (leave_out, role), to_make).await;
        let rolled_back = client.batch_execute("ROLLBACK").await;
        let left_out = tried?;
        rolled_back?;
        let places: Vec<usize> = left_out.iter().map(|(place, _)| *place).collect();
        object.settings = std::mem::take(&mut object.settings)
            .into_iter()
            .enumerate()
            .filter_map(|(place, setting)| (!places.contains(&place)).then_some(setting))
            .collect();
        Ok(left_out.into_iter().map(|(_, warning)| warning).collect())
    }

    /// [`Server::try_giving`]'s work, in the transaction it opened: the settings refused, each
    /// by its place in `object.settings` with its warning.
    async fn try_in_transaction(
        &self,
        loading: &str,
        object: &DatabaseObject,
        (leave_out, role): (LeaveOut, Option<&str>),
        to_make: &[&RoleRecord],
    ) -> Result<Vec<(usize, String)>> {
        let client = self.client();
        if let Some(role) = role {
            client.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(role))).await?;
        }
        if let Err(error) = super::load::create_roles(client, to_make).await {
            return Err(Error::Invalid(format!(
                "making the roles --create-roles makes: {}; nothing was created",
                crate::error::printable(&error.to_string())
            )));
        }
        let mut left_out = Vec::new();
        for given in given(loading, object, leave_out) {
            let Some(error) = give(client, &given).await? else { continue };
            // Only a refusal leaves a setting out; a timeout, a deadlock, … is an error.
            let Some((place, why)) = given.setting.zip(refusal(&error)) else {
                return Err(refused(
                    &given.sql,
                    given.setting.map(|place| object.settings[place].name.as_str()),
                    &error,
                ));
            };
            let setting = &object.settings[place];
            let of_role = setting.role.as_deref().map(|r| format!(" of role {}", crate::error::printable(r)));
            let who = role.map_or_else(String::new, |r| format!(" to {}", crate::error::printable(r)));
            left_out.push((
                place,
                format!(
                    "left out: the setting {}{} in the new database: the server refused it{who} ({}); set it by \
                     hand if it is wanted",
                    crate::error::printable(&setting.name),
                    of_role.unwrap_or_default(),
                    why,
                ),
            ));
        }
        Ok(left_out)
    }

    /// Leaves out of `object` the settings only a superuser may set (`session_replication_role`,
    /// `lo_compat_privileges`, `log_statement`, `session_preload_libraries`, …: the server's
    /// `superuser` and `superuser-backend` contexts): settings of a database are the
    /// snapshot's word, whoever controls the backup host writes them, and these would skip
    /// every trigger and foreign key of the new database, open its large objects, hide its
    /// statements from the log or load libraries into every session. So is a `search_path`
    /// that names `pg_catalog` after another schema: the snapshot's functions and operators there
    /// would answer before the server's in every later session, a superuser's included.
    /// Returns a warning for each one left out (`--trust-snapshot-code` gives them all).
    pub async fn leave_out_superuser_settings(&self, object: &mut DatabaseObject) -> Result<Vec<String>> {
        let names: Vec<String> = object.settings.iter().map(|s| s.name.to_ascii_lowercase()).collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let sql = "SELECT name::text FROM pg_catalog.pg_settings \
                   WHERE name = ANY ($1) AND context IN ('superuser', 'superuser-backend')";
        let only: Vec<String> = self.client().query(sql, &[&names]).await?.iter().map(|row| row.get(0)).collect();
        let mut warnings = Vec::new();
        object.settings.retain(|setting| {
            let name = setting.name.to_ascii_lowercase();
            let why = if only.contains(&name) {
                "only a superuser may set it"
            } else if name == "search_path"
                && list_elements(&setting.value).iter().skip(1).any(|schema| schema.eq_ignore_ascii_case("pg_catalog"))
            {
                "it puts a schema before pg_catalog"
            } else {
                return true;
            };
            let of_role = setting.role.as_deref().map(|r| format!(" of role {}", crate::error::printable(r)));
            warnings.push(format!(
                "left out: the setting {}{} in the new database: {why}, and the snapshot chose it (give \
                 --trust-snapshot-code if you trust its source, or set it by hand)",
                crate::error::printable(&setting.name),
                of_role.unwrap_or_default()
            ));
            false
        });
        Ok(warnings)
    }

    /// `object` without the settings of roles that are superusers on this server: a source
    /// role named like this server's superuser (made by a source role with `CREATEROLE`) must
    /// not choose that superuser's `search_path` in the new database. Each one left out is said.
    async fn without_superusers_settings(&self, object: &DatabaseObject) -> Result<DatabaseObject> {
        let roles: Vec<&str> = object.settings.iter().filter_map(|s| s.role.as_deref()).collect();
        if roles.is_empty() {
            return Ok(object.clone());
        }
        // A member of a superuser role can become it (`SET ROLE`): as good as one.
        let sql = "SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE r.rolname = ANY ($1) AND (r.rolsuper \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles s WHERE s.rolsuper \
                                AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER')))";
        let superusers: Vec<String> = self.client().query(sql, &[&roles]).await?.iter().map(|row| row.get(0)).collect();
        let mut kept = object.clone();
        kept.settings.retain(|setting| match &setting.role {
            Some(role) if superusers.contains(role) => {
                tracing::warn!(
                    "left out: the setting {} of role {} in the new database (a superuser on this server, or a \
                     member of one; set it by hand if it is wanted)",
                    crate::error::printable(&setting.name),
                    crate::error::printable(role)
                );
                false
            }
            _ => true,
        });
        Ok(kept)
    }
}

/// Runs one of [`given`]'s statements in the caller's transaction, under a savepoint: `None`
/// when it is given, else the server's error (the statement undone, the transaction usable).
/// A setting's probe goes first: refused as such ([`refusal`]), the statement is not sent, so
/// its value does not reach the server's log. A probe failing otherwise (a setting that cannot
/// be reset, such as PostgreSQL 16's `transaction_read_only`) leaves the statement to decide.
async fn give(client: &tokio_postgres::Client, given: &Given) -> Result<Option<tokio_postgres::Error>> {
    client.batch_execute("SAVEPOINT giving").await?;
    if let Some(probe) = &given.probe {
        let probed = client.batch_execute(probe).await;
        client.batch_execute("ROLLBACK TO SAVEPOINT giving").await?;
        match probed {
            Err(error) if error.as_db_error().is_none() => return Err(error.into()),
            Err(error) if refusal(&error).is_some() => return Ok(Some(error)),
            _ => {}
        }
    }
    match client.batch_execute(&given.sql).await {
        Ok(()) => {
            client.batch_execute("RELEASE SAVEPOINT giving").await?;
            Ok(None)
        }
        Err(error) if error.as_db_error().is_none() => Err(error.into()),
        Err(error) => {
            client.batch_execute("ROLLBACK TO SAVEPOINT giving").await?;
            Ok(Some(error))
        }
    }
}

/// Why the server refused a setting as such, in words and SQLSTATE (never its message: that may
/// quote the value, and a value may be a secret): the role may not set it, this server does not
/// know it or reserves its name, or not that value. `None` for any other error.
fn refusal(error: &tokio_postgres::Error) -> Option<String> {
    use tokio_postgres::error::SqlState;
    let code = error.code()?;
    let words = match code {
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => "permission denied",
        c if *c == SqlState::UNDEFINED_OBJECT => "a setting this server does not know",
        c if *c == SqlState::INVALID_PARAMETER_VALUE => "a value it does not take",
        c if *c == SqlState::CANT_CHANGE_RUNTIME_PARAM => "one set only at server start",
        // A custom setting under a prefix an extension loaded here reserves (`plpgsql.x`).
        c if *c == SqlState::INVALID_NAME => "a name this server reserves",
        _ => return None,
    };
    Some(format!("{words}, SQLSTATE {}", code.code()))
}

/// The server's refusal of one of [`statements`] (giving `setting`, if one), with what to do. A
/// setting's value is never repeated: the server's message may quote it, and a value may be a
/// secret.
fn refused(statement: &str, setting: Option<&str>, error: &tokio_postgres::Error) -> Error {
    let what = if let Some(name) = setting {
        let code = error.code().map_or("", tokio_postgres::error::SqlState::code);
        return Error::Invalid(format!(
            "giving the new database its setting {}: the server refused it (SQLSTATE {code}); nothing was created",
            crate::error::printable(name)
        ));
    } else if statement.contains(" OWNER TO ") {
        " (--no-owner leaves the database to the restoring role)"
    } else if statement.starts_with("GRANT ") || statement.starts_with("REVOKE ") {
        " (--no-acl gives it a new database's privileges)"
    } else {
        ""
    };
    Error::Invalid(format!(
        "giving the new database what the source's had: {}{what}; nothing was created",
        crate::error::postgres_message(error)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut with_owner = object.clone();
        with_owner.privileges.push(DatabasePrivilege {
            grantee: Some(object.owner.clone()),
            privilege: "CONNECT".into(),
            grantable: false,
        });
        let no_owner = statements("crm", &with_owner, LeaveOut { owners: true, privileges: false });
        assert!(!no_owner.iter().any(|s| s.contains("owner")), "{no_owner:?}");
        assert_eq!(roles_needed(&with_owner, LeaveOut { owners: true, privileges: false }), ["app", "x"]);
        let bare = statements("crm", &object, LeaveOut { owners: true, privileges: true });
        assert_eq!(bare.len(), 3, "{bare:?}");
        assert_eq!(roles_needed(&object, all), ["app", "app\"owner", "x"]);
        assert_eq!(roles_needed(&object, LeaveOut { owners: true, privileges: true }), ["app"]);
    }
}
