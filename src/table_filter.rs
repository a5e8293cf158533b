//! Table patterns (`--table`, `--exclude-table`, `--alarm-table`), matched against
//! `schema.table`: backup chooses what to read with them, `diff` what to compare.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// A table pattern as matched against `schema.table`: one without a schema part matches that
/// table in every schema (`--table`, `--exclude-table`, `--alarm-table`).
pub fn qualified(pattern: &str) -> String {
    if pattern.contains('.') { pattern.to_string() } else { format!("*.{pattern}") }
}

/// `--table` / `--exclude-table` patterns, matched against `schema.table`.
#[derive(Debug)]
pub struct TableFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// The patterns as given, in the order of the sets' globs.
    include_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
}

impl TableFilter {
    /// Patterns to keep (everything when none) and to leave out; a bad pattern is refused.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let build = |patterns: &[String]| -> Result<GlobSet> {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                let glob = Glob::new(&qualified(pattern))
                    .map_err(|e| Error::Invalid(format!("bad table pattern {pattern:?}: {e}")))?;
                builder.add(glob);
            }
            builder.build().map_err(|e| Error::Invalid(format!("bad table patterns: {e}")))
        };
        Ok(TableFilter {
            include: if include.is_empty() { None } else { Some(build(include)?) },
            exclude: build(exclude)?,
            include_patterns: include.to_vec(),
            exclude_patterns: exclude.to_vec(),
        })
    }

    /// The include patterns that match none of `names` (`schema.table`): each is a mistake
    /// that would otherwise leave its tables out of every backup without a word.
    pub fn unmatched_includes<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        let Some(set) = &self.include else { return Vec::new() };
        Self::unmatched(set, &self.include_patterns, names)
    }

    /// The exclude patterns that match none of `names`.
    pub fn unmatched_excludes<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        Self::unmatched(&self.exclude, &self.exclude_patterns, names)
    }

    fn unmatched<'a>(set: &GlobSet, patterns: &'a [String], names: &[String]) -> Vec<&'a str> {
        let mut matched = vec![false; patterns.len()];
        for name in names {
            for index in set.matches(name) {
                matched[index] = true;
            }
        }
        patterns.iter().zip(matched).filter(|(_, m)| !m).map(|(p, _)| p.as_str()).collect()
    }

    /// Whether the patterns keep `schema.table`.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.matches_name(&format!("{schema}.{table}"))
    }

    /// Whether the patterns keep a name written `schema.table`.
    pub fn matches_name(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name)) && !self.exclude.is_match(name)
    }

    /// Refuses a selection whose restore would fail: a kept table referencing a left-out one.
    pub fn check_foreign_keys(&self, foreign_keys: &[(String, String)]) -> Result<()> {
        for (referencing, referenced) in foreign_keys {
            if self.matches_name(referencing) && !self.matches_name(referenced) {
                return Err(Error::Invalid(format!(
                    "{referencing} has a foreign key to {referenced}, whose data the table patterns leave out; \
                     a restore could not rebuild that key: keep {referenced} or leave out {referencing} too"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_match_schema_qualified_names() {
        let filter = TableFilter::new(&["crm.*".into(), "audit_log".into()], &["crm.tmp_*".into()]).unwrap();
        assert!(filter.matches("crm", "contacts"));
        assert!(filter.matches("billing", "audit_log"));
        assert!(!filter.matches("crm", "tmp_import"));
        assert!(!filter.matches("billing", "invoices"));
    }

    #[test]
    fn patterns_that_match_no_table_are_named() {
        let filter =
            TableFilter::new(&["crm.*".into(), "nosuch.*".into()], &["crm.tmp_*".into(), "gone".into()]).unwrap();
        let names = vec!["crm.contacts".to_string(), "crm.tmp_import".to_string()];
        assert_eq!(filter.unmatched_includes(&names), vec!["nosuch.*"]);
        assert_eq!(filter.unmatched_excludes(&names), vec!["gone"]);
        let everything = TableFilter::new(&[], &[]).unwrap();
        assert!(everything.unmatched_includes(&names).is_empty());
    }
}
