//! Retention: which snapshots a policy keeps, and why (restic's rules and meanings).
//!
//! A policy is a set of rules; a snapshot is kept when any rule keeps it. Going from the newest
//! snapshot to the oldest:
//! - `last N` keeps the N newest;
//! - `hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each of the N newest
//!   hours, days, ISO weeks, months or years that hold a snapshot, in the time zone given
//!   (the CLI gives the machine's local zone, as restic does);
//! - `within D` keeps every snapshot no older than D before the newest one (not before "now":
//!   a backup host that stopped for a month still keeps its last D of history);
//! - `tag T` keeps every snapshot carrying T.
//!
//! Everything here is pure: the snapshots, the policy and the zone are parameters.

use chrono::{DateTime, Datelike, Months, TimeZone, Timelike, Utc};

use crate::error::{Error, Result};

/// A span of calendar time, as `--keep-within` takes it: `1y6m`, `30d`, `12h`, `2w`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Years.
    pub years: u32,
    /// Months.
    pub months: u32,
    /// Days (a week is 7).
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Span, String> {
        let mut span = Span::default();
        let mut number = String::new();
        let mut any = false;
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let n: u32 = number.parse().map_err(|_| format!("{text:?} is not a span like 30d, 2w, 1y6m or 12h"))?;
            match c {
                'y' => span.years += n,
                'm' => span.months += n,
                'w' => span.days += 7 * n,
                'd' => span.days += n,
                'h' => span.hours += n,
                _ => return Err(format!("{text:?}: unknown unit {c:?} (use y, m, w, d or h)")),
            }
            number.clear();
            any = true;
        }
        if !number.is_empty() || !any {
            return Err(format!("{text:?} is not a span like 30d, 2w, 1y6m or 12h (a number needs a unit)"));
        }
        Ok(span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")];
        let mut any = false;
        for (n, unit) in parts.into_iter().filter(|(n, _)| *n > 0) {
            write!(f, "{n}{unit}")?;
            any = true;
        }
        if !any {
            f.write_str("0h")?;
        }
        Ok(())
    }
}

impl Span {
    /// `time` moved back by this span, in calendar terms (a month back from 31 March is the
    /// last day of February).
    fn before(&self, time: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years.saturating_mul(12).saturating_add(self.months);
        let back = time.checked_sub_months(Months::new(months)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        back.checked_sub_signed(
            chrono::Duration::days(i64::from(self.days)) + chrono::Duration::hours(i64::from(self.hours)),
        )
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// What to keep. Counts of 0 leave a rule out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The newest N.
    pub last: u32,
    /// The newest of each of the last N hours with a snapshot.
    pub hourly: u32,
    /// … days.
    pub daily: u32,
    /// … ISO weeks.
    pub weekly: u32,
    /// … months.
    pub monthly: u32,
    /// … years.
    pub yearly: u32,
    /// Every snapshot within this span of the newest.
    pub within: Option<Span>,
    /// Every snapshot carrying one of these tags.
    pub tags: Vec<String>,
}

impl Policy {
    /// Whether no rule is given (which would keep nothing).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within_rule().is_none()
            && self.tags.is_empty()
    }

    /// `within` as a rule: a span of 0 (`--keep-within 0d`) is none, as a count of 0 is, and as
    /// restic takes it; kept as one, it kept only the newest snapshot and forgot the rest.
    fn within_rule(&self) -> Option<Span> {
        self.within.filter(|span| *span != Span::default())
    }
}

impl Policy {
    /// The rules as [`Policy`]'s `Display` gives them, but tags counted, not named: what a
    /// forget record, which storage can read, says of the policy (tags are in the encrypted
    /// manifests only).
    pub fn without_tag_names(&self) -> String {
        let untagged = Policy { tags: Vec::new(), ..self.clone() }.to_string();
        match (self.tags.len(), untagged.is_empty()) {
            (0, _) => untagged,
            (n, true) => format!("keep-tag ({n} tag{})", if n == 1 { "" } else { "s" }),
            (n, false) => format!("{untagged}, keep-tag ({n} tag{})", if n == 1 { "" } else { "s" }),
        }
    }
}

impl std::fmt::Display for Policy {
    /// The rules as flags would give them: "keep-daily 7, keep-weekly 5".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (n, name) in [
            (self.last, "last"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ] {
            if n > 0 {
                parts.push(format!("keep-{name} {n}"));
            }
        }
        if let Some(span) = self.within_rule() {
            parts.push(format!("keep-within {span}"));
        }
        for tag in &self.tags {
            parts.push(format!("keep-tag {tag}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// One snapshot as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether its backup raised the data-loss alarm.
    pub flagged: bool,
}

/// Why a snapshot is kept: every rule that keeps it (empty: it is removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The rules that keep it, as words: "last", "daily", "within 30d", "tag nightly".
    pub reasons: Vec<String>,
}

impl Verdict {
    /// Whether any rule keeps it.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Which calendar bucket (hour, day, week, month, year) a local time falls in.
type Bucket = fn(&DateTime<chrono::FixedOffset>) -> i64;

/// Decides, for each of `candidates` (one group: the snapshots of one database), whether
/// `policy` keeps it, in the time zone `zone`. The verdicts are in the candidates' order.
pub fn plan<Tz: TimeZone>(candidates: &[Candidate], policy: &Policy, zone: &Tz) -> Vec<Verdict> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    // Newest first; equal times in the given order.
    order.sort_by(|a, b| candidates[*b].time.cmp(&candidates[*a].time));
    let newest = order.first().map(|&i| candidates[i].time);
    let within_from = newest.zip(policy.within_rule()).map(|(newest, span)| span.before(newest));

    let hour: Bucket = |t| day_number(t) * 100 + i64::from(t.hour());
    let day: Bucket = day_number;
    let week: Bucket = |t| {
        let week = t.iso_week();
        i64::from(week.year()) * 100 + i64::from(week.week())
    };
    let month: Bucket = |t| i64::from(t.year()) * 100 + i64::from(t.month());
    let year: Bucket = |t| i64::from(t.year());
    let mut rules: Vec<(&str, u32, Bucket, Option<i64>)> = vec![
        ("hourly", policy.hourly, hour, None),
        ("daily", policy.daily, day, None),
        ("weekly", policy.weekly, week, None),
        ("monthly", policy.monthly, month, None),
        ("yearly", policy.yearly, year, None),
    ];
    let mut last_left = policy.last;
    let mut verdicts = vec![Verdict::default(); candidates.len()];
    for index in order {
        let candidate = &candidates[index];
        let reasons = &mut verdicts[index].reasons;
        if last_left > 0 {
            last_left -= 1;
            reasons.push("last".into());
        }
        let local = candidate.time.with_timezone(zone).fixed_offset();
        for (name, left, bucket, previous) in &mut rules {
            if *left == 0 {
                continue;
            }
            let key = bucket(&local);
            if *previous != Some(key) {
                *previous = Some(key);
                *left -= 1;
                reasons.push((*name).into());
            }
        }
        if let (Some(from), Some(span)) = (within_from, policy.within_rule())
            && candidate.time >= from
        {
            reasons.push(format!("within {span}"));
        }
        for tag in policy.tags.iter().filter(|tag| candidate.tags.contains(tag)) {
            reasons.push(format!("tag {tag}"));
        }
    }
    verdicts
}

/// What `forget` keeps whatever the policy says (unless told `--forget-flagged`): every
/// snapshot whose backup raised the data-loss alarm (it may be the evidence of a mass
/// deletion), and the newest unflagged one before each (the data as it was before).
pub fn keep_flagged(candidates: &[Candidate], verdicts: &mut [Verdict]) {
    for (index, flagged) in candidates.iter().enumerate().filter(|(_, c)| c.flagged) {
        verdicts[index].reasons.push("flagged by the data-loss alarm".into());
        let before = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.flagged && c.time < flagged.time)
            .max_by_key(|(_, c)| c.time)
            .map(|(i, _)| i);
        if let Some(before) = before {
            let reason = "the last unflagged before a flagged one".to_string();
            if !verdicts[before].reasons.contains(&reason) {
                verdicts[before].reasons.push(reason);
            }
        }
    }
}

fn day_number(time: &DateTime<chrono::FixedOffset>) -> i64 {
    i64::from(time.year()) * 10_000 + i64::from(time.month()) * 100 + i64::from(time.day())
}

/// Refuses a policy that keeps nothing at all: no rule given.
pub fn check(policy: &Policy) -> Result<()> {
    if policy.is_empty() {
        return Err(Error::Retention("no keep rule given, so every snapshot would be removed".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn at(text: &str) -> Candidate {
        Candidate { time: text.parse().expect("test time"), tags: vec![], flagged: false }
    }

    fn kept(candidates: &[Candidate], policy: &Policy) -> Vec<bool> {
        plan(candidates, policy, &Utc).iter().map(Verdict::keep).collect()
    }

    /// One snapshot a night at 01:00 UTC from `first` for `nights` nights.
    fn nightly(first: &str, nights: i64) -> Vec<Candidate> {
        let start: DateTime<Utc> = first.parse().expect("test time");
        (0..nights)
            .map(|n| Candidate { time: start + chrono::Duration::days(n), tags: vec![], flagged: false })
            .collect()
    }

    #[test]
    fn flagged_snapshots_and_the_last_unflagged_before_each_are_kept_whatever_the_policy() {
        let mut nights = nightly("2026-01-01T02:00:00Z", 10);
        nights[4].flagged = true;
        nights[5].flagged = true;
        nights[8].flagged = true;
        let policy = Policy { last: 1, ..Policy::default() };
        let mut verdicts = plan(&nights, &policy, &Utc);
        keep_flagged(&nights, &mut verdicts);
        let kept: Vec<usize> = (0..10).filter(|&i| verdicts[i].keep()).collect();
        assert_eq!(kept, [3, 4, 5, 7, 8, 9]);
        assert_eq!(verdicts[4].reasons, ["flagged by the data-loss alarm"]);
        assert_eq!(verdicts[3].reasons, ["the last unflagged before a flagged one"]);
        assert_eq!(verdicts[9].reasons, ["last"]);
    }

    #[test]
    fn spans_parse_in_calendar_units_and_refuse_what_has_no_unit() {
        assert_eq!("1y6m".parse::<Span>(), Ok(Span { years: 1, months: 6, days: 0, hours: 0 }));
        assert_eq!("2w3d12h".parse::<Span>(), Ok(Span { years: 0, months: 0, days: 17, hours: 12 }));
        for bad in ["", "30", "3x", "d", "-3d"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?}");
        }
        assert_eq!("1y6m".parse::<Span>().map(|s| s.to_string()), Ok("1y6m".into()));
        let end: DateTime<Utc> = "2026-03-31T10:00:00Z".parse().expect("time");
        assert_eq!(
            Span { months: 1, ..Span::default() }.before(end),
            "2026-02-28T10:00:00Z".parse::<DateTime<Utc>>().expect("time")
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_whatever_the_order_given() {
        let candidates = vec![at("2026-01-02T00:00:00Z"), at("2026-01-05T00:00:00Z"), at("2026-01-01T00:00:00Z")];
        assert_eq!(kept(&candidates, &Policy { last: 2, ..Policy::default() }), [true, true, false]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_counts_days_with_a_snapshot() {
        let candidates = vec![
            at("2026-01-03T23:00:00Z"),
            at("2026-01-03T01:00:00Z"),
            at("2026-01-01T12:00:00Z"),
            at("2025-12-20T12:00:00Z"),
        ];
        // Three days with snapshots are 3 Jan, 1 Jan and 20 Dec (2 Jan had none).
        assert_eq!(kept(&candidates, &Policy { daily: 3, ..Policy::default() }), [true, false, true, true]);
        assert_eq!(kept(&candidates, &Policy { daily: 2, ..Policy::default() }), [true, false, true, false]);
    }

    #[test]
    fn days_are_reckoned_in_the_zone_given() {
        // 23:30 UTC on 1 Jan and 00:30 UTC on 2 Jan: two days in UTC, one in UTC-5.
        let candidates = vec![at("2026-01-02T00:30:00Z"), at("2026-01-01T23:30:00Z")];
        let policy = Policy { daily: 5, ..Policy::default() };
        assert_eq!(kept(&candidates, &policy), [true, true]);
        let new_york = FixedOffset::west_opt(5 * 3600).expect("offset");
        let verdicts: Vec<bool> = plan(&candidates, &policy, &new_york).iter().map(Verdict::keep).collect();
        assert_eq!(verdicts, [true, false]);
    }

    #[test]
    fn weeks_are_iso_weeks_and_a_year_of_nights_keeps_what_the_rules_say() {
        // 2026-12-28 (Monday) and 2027-01-03 (Sunday) share ISO week 53 of 2026.
        let candidates = vec![at("2027-01-03T01:00:00Z"), at("2026-12-28T01:00:00Z"), at("2026-12-27T01:00:00Z")];
        assert_eq!(kept(&candidates, &Policy { weekly: 2, ..Policy::default() }), [true, false, true]);

        let year = nightly("2026-01-01T01:00:00Z", 365);
        let policy = Policy { daily: 7, weekly: 5, monthly: 12, ..Policy::default() };
        let verdicts = plan(&year, &policy, &Utc);
        let kept: Vec<&Candidate> = year.iter().zip(&verdicts).filter(|(_, v)| v.keep()).map(|(c, _)| c).collect();
        // 7 days (21-31 Dec: the 25th-31st), 5 ISO weeks' newest (the 31st is one of the days, then
        // the Sundays 27, 20, 13, 6 Dec), 12 months' newest (31 Dec, then the last day of Jan..Nov).
        let expected: std::collections::BTreeSet<String> = [
            "2026-12-25",
            "2026-12-26",
            "2026-12-27",
            "2026-12-28",
            "2026-12-29",
            "2026-12-30",
            "2026-12-31",
            "2026-12-20",
            "2026-12-13",
            "2026-12-06",
            "2026-01-31",
            "2026-02-28",
            "2026-03-31",
            "2026-04-30",
            "2026-05-31",
            "2026-06-30",
            "2026-07-31",
            "2026-08-31",
            "2026-09-30",
            "2026-10-31",
            "2026-11-30",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let got: std::collections::BTreeSet<String> =
            kept.iter().map(|c| c.time.format("%Y-%m-%d").to_string()).collect();
        assert_eq!(got, expected);
        let newest = verdicts[364].reasons.clone();
        assert_eq!(newest, ["daily", "weekly", "monthly"]);
    }

    #[test]
    fn within_counts_back_from_the_newest_snapshot_not_from_now() {
        let candidates = nightly("2020-01-01T01:00:00Z", 10);
        let verdicts =
            plan(&candidates, &Policy { within: Some("3d".parse().expect("span")), ..Policy::default() }, &Utc);
        let kept: Vec<bool> = verdicts.iter().map(Verdict::keep).collect();
        assert_eq!(kept, [false, false, false, false, false, false, true, true, true, true]);
        assert_eq!(verdicts[9].reasons, ["within 3d"]);
    }

    #[test]
    fn a_within_span_of_zero_is_no_rule_as_a_count_of_zero_is() {
        let zero = Policy { within: Some("0d".parse().expect("span")), ..Policy::default() };
        assert!(zero.is_empty(), "refused as no policy, not kept as one keeping the newest only");
        let candidates = nightly("2020-01-01T01:00:00Z", 4);
        let with_daily = Policy { daily: 2, ..zero };
        let reasons: Vec<Vec<String>> = plan(&candidates, &with_daily, &Utc).into_iter().map(|v| v.reasons).collect();
        assert_eq!(reasons, [vec![], vec![], vec!["daily".to_string()], vec!["daily".to_string()]]);
        assert_eq!(with_daily.to_string(), "keep-daily 2");
    }

    #[test]
    fn tags_keep_what_they_name_and_an_empty_policy_is_refused() {
        let mut candidates = nightly("2026-01-01T01:00:00Z", 3);
        candidates[0].tags = vec!["before-upgrade".into()];
        let policy = Policy { last: 1, tags: vec!["before-upgrade".into()], ..Policy::default() };
        let verdicts = plan(&candidates, &policy, &Utc);
        assert_eq!(verdicts.iter().map(Verdict::keep).collect::<Vec<_>>(), [true, false, true]);
        assert_eq!(verdicts[0].reasons, ["tag before-upgrade"]);
        assert!(check(&Policy::default()).is_err());
        assert!(check(&policy).is_ok());
        assert_eq!(policy.to_string(), "keep-last 1, keep-tag before-upgrade");
        assert_eq!(policy.without_tag_names(), "keep-last 1, keep-tag (1 tag)");
    }
}
