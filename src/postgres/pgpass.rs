//! libpq's password file (`~/.pgpass`, `PGPASSFILE`), read as libpq reads it: one
//! `hostname:port:database:username:password` entry a line, the first line whose four fields
//! match the connection wins, `*` matches anything, `\:` and `\\` escape, `#` starts a comment.
//! The CLI finds the file and checks that only its owner can read it; this module only reads
//! the text it is given.

/// Where a connection goes, as `.pgpass` compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFileKey<'a> {
    /// The host name, or `localhost` for a Unix socket (libpq's rule).
    pub host: &'a str,
    /// The port.
    pub port: u16,
    /// The database name.
    pub database: &'a str,
    /// The user name.
    pub user: &'a str,
}

/// The password the first matching line of `contents` gives for `key`, if any.
pub fn lookup(contents: &str, key: &PasswordFileKey<'_>) -> Option<String> {
    let port = key.port.to_string();
    let wanted = [key.host, port.as_str(), key.database, key.user];
    contents.lines().map(|line| line.trim_end_matches('\r')).filter(|line| !line.starts_with('#')).find_map(|line| {
        let fields = split(line)?;
        let matches = fields[..4].iter().zip(wanted).all(|(field, value)| field == "*" || field == value);
        matches.then(|| fields[4].clone())
    })
}

/// The five fields of a line, unescaped; `None` for a line with fewer (libpq skips it). The
/// password is the rest of the line: a `:` in it needs no escape.
fn split(line: &str) -> Option<[String; 5]> {
    let mut fields: Vec<String> = vec![String::new()];
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => {
                if let Some(escaped) = characters.next() {
                    fields.last_mut()?.push(escaped);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            other => fields.last_mut()?.push(other),
        }
    }
    fields.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, database: &'a str, user: &'a str) -> PasswordFileKey<'a> {
        PasswordFileKey { host, port: 5432, database, user }
    }

    #[test]
    fn the_first_matching_line_wins() {
        let file = "db1:5432:crm:backup:first\ndb1:5432:crm:backup:second\n";
        assert_eq!(lookup(file, &key("db1", "crm", "backup")).as_deref(), Some("first"));
    }

    #[test]
    fn a_star_matches_any_value() {
        let file = "other:5432:crm:backup:no\n*:*:*:backup:yes\n";
        assert_eq!(lookup(file, &key("db1", "sales", "backup")).as_deref(), Some("yes"));
        assert_eq!(lookup(file, &key("db1", "sales", "admin")), None);
    }

    #[test]
    fn the_port_must_match() {
        let file = "db1:5433:crm:backup:elsewhere\n";
        assert_eq!(lookup(file, &key("db1", "crm", "backup")), None);
    }

    #[test]
    fn escapes_and_colons_in_the_password_are_read() {
        let file = "db\\:1:5432:crm:back\\\\up:pa:ss\\:word\n";
        assert_eq!(lookup(file, &key("db:1", "crm", "back\\up")).as_deref(), Some("pa:ss:word"));
    }

    #[test]
    fn comments_short_lines_and_crlf_are_handled() {
        let file = "# db1:5432:crm:backup:commented\r\ndb1:5432:crm\r\ndb1:5432:crm:backup:real\r\n";
        assert_eq!(lookup(file, &key("db1", "crm", "backup")).as_deref(), Some("real"));
    }
}
