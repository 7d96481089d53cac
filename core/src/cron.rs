//! Cron schedules: parsing standard five-field expressions in a time zone, the instants they
//! fire at, which of them are due after downtime, and what to do when the previous run is
//! still going.
//!
//! Everything here is pure: the clock is a parameter (`after`, `now`), so the control service
//! decides with the same functions the tests exercise. Nothing here stores which instants have
//! run; the caller keeps `last_fired` and passes it back, and [`Schedule::due`] never returns
//! an instant at or before it.
//!
//! # Daylight-saving semantics
//!
//! Expressions are read in wall-clock time of the schedule's zone (like Vixie cron and
//! Kubernetes CronJobs with `timeZone`). Two kinds of schedule behave differently across a
//! transition, and the split is made on the hour field:
//!
//! * **Fixed-hour schedules** (the hour field does not cover all 24 hours, e.g. `30 2 * * *`):
//!   - *Spring gap*: a local time that does not exist fires once, at the first whole local
//!     minute after the gap (02:30 on the spring-forward day in Europe/Berlin fires at 03:00
//!     CEST). Several gap times collapse into that single instant, and if the schedule also
//!     names that instant itself it still fires once.
//!   - *Autumn repeat*: a local time that occurs twice fires once, at its first occurrence.
//! * **Every-hour schedules** (the hour field covers all 24 hours, e.g. `*/15 * * * *` or
//!   `0 * * * *`) follow real time: a local time in the gap is simply skipped (the wall clock
//!   never shows it, and no real interval is lost), and a repeated local time fires at both of
//!   its occurrences (both are distinct real instants). So `*/15 * * * *` fires every 15 real
//!   minutes straight through both transitions: 92 times on a 23-hour spring day, 100 on a
//!   25-hour autumn day, 96 in any 24 real hours.
//!
//! The day-of-month / day-of-week rule is Vixie's (crontab(5)): when both fields are
//! restricted (neither starts with `*`) a day matches if *either* matches; otherwise both must.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::collections::BTreeSet;
use std::fmt;

/// How many days `next_after` scans without finding an instant before it concludes the
/// schedule never fires again. One Gregorian cycle (400 years) repeats every calendar pattern,
/// so a schedule silent for that long is silent forever.
const MAX_SCAN_DAYS: u32 = 146_097 + 7;

/// The most skipped instants [`Schedule::due`] lists; past that it only sets `more_skipped`.
pub const MAX_REPORTED_SKIPS: usize = 100;

/// The default on-time window for [`MissedRunPolicy`]: an instant at most this late counts as
/// on time, not missed. The control loop must evaluate schedules more often than this.
pub const DEFAULT_GRACE: Duration = Duration::seconds(60);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "cron expression {expr:?} has {found} fields; expected 5 (minute hour day-of-month month day-of-week) or a macro such as @daily"
    )]
    FieldCount { expr: String, found: usize },
    #[error("cron field {position} ({field}): {token} is out of range {min}-{max}")]
    OutOfRange { position: usize, field: &'static str, token: String, min: u32, max: u32 },
    #[error("cron field {position} ({field}): {token:?} is not a number{names}")]
    BadToken { position: usize, field: &'static str, token: String, names: &'static str },
    #[error("cron field {position} ({field}): step in {token:?} must be at least 1")]
    ZeroStep { position: usize, field: &'static str, token: String },
    #[error("cron field {position} ({field}): range {token:?} starts after it ends")]
    BackwardRange { position: usize, field: &'static str, token: String },
    #[error("unknown cron macro {0:?}; expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly")]
    UnknownMacro(String),
    #[error("unknown time zone {0:?}; expected an IANA name such as Europe/Berlin or UTC")]
    UnknownTimeZone(String),
    #[error("cron expression {0:?} never fires: none of its days of the month occur in its months")]
    NeverFires(String),
}

/// A parsed cron expression in a time zone. It cannot be invalid once built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// The day-of-month field started with `*` (crontab(5)'s notion of "not restricted").
    dom_star: bool,
    dow_star: bool,
}

struct Field {
    position: usize,
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    names_hint: &'static str,
}

const MINUTE: Field = Field { position: 1, name: "minute", min: 0, max: 59, names: &[], names_hint: "" };
const HOUR: Field = Field { position: 2, name: "hour", min: 0, max: 23, names: &[], names_hint: "" };
const DAY_OF_MONTH: Field = Field { position: 3, name: "day-of-month", min: 1, max: 31, names: &[], names_hint: "" };
const MONTH: Field = Field {
    position: 4,
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    names_hint: " or a month name (JAN-DEC)",
};
/// Parsed over 0-7 (7 is Sunday again), then folded into 0-6.
const DAY_OF_WEEK: Field = Field {
    position: 5,
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    names_hint: " or a day name (SUN-SAT)",
};

impl Field {
    fn value(&self, token: &str, whole: &str) -> Result<u32, CronError> {
        if let Some(index) = self.names.iter().position(|name| name.eq_ignore_ascii_case(token)) {
            // Month names start at 1, day names at 0: both equal `min + index`.
            return Ok(self.min + index as u32);
        }
        let value: u32 = token.parse().map_err(|_| CronError::BadToken {
            position: self.position,
            field: self.name,
            token: whole.to_string(),
            names: self.names_hint,
        })?;
        if value < self.min || value > self.max {
            return Err(CronError::OutOfRange {
                position: self.position,
                field: self.name,
                token: token.to_string(),
                min: self.min,
                max: self.max,
            });
        }
        Ok(value)
    }

    /// Parses one field into a bit set (bit `v` set when value `v` matches) and whether the
    /// field starts with `*`.
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step.parse().map_err(|_| CronError::BadToken {
                        position: self.position,
                        field: self.name,
                        token: item.to_string(),
                        names: "",
                    })?;
                    if step == 0 {
                        return Err(CronError::ZeroStep {
                            position: self.position,
                            field: self.name,
                            token: item.to_string(),
                        });
                    }
                    (range, Some(step))
                }
                None => (item, None),
            };
            let (start, end) = if range == "*" {
                // `*` in day-of-week means 0-6: 7 would only repeat Sunday.
                (self.min, if self.position == 5 { 6 } else { self.max })
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a, item)?, self.value(b, item)?);
                if a > b {
                    return Err(CronError::BackwardRange {
                        position: self.position,
                        field: self.name,
                        token: item.to_string(),
                    });
                }
                (a, b)
            } else {
                let a = self.value(range, item)?;
                // `5/15` means "from 5 to the end, every 15" (as in Kubernetes' parser).
                (a, if step.is_some() { self.max } else { a })
            };
            let mut value = start;
            while value <= end {
                bits |= 1 << value;
                value += step.unwrap_or(1);
            }
        }
        Ok((bits, text.starts_with('*')))
    }
}

fn full(min: u32, max: u32) -> u64 {
    (min..=max).fold(0, |bits, v| bits | 1 << v)
}

fn days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Schedule {
    /// Parses a five-field expression or a macro, read in the IANA zone `tz` (`None`: UTC).
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Schedule, CronError> {
        let tz_name = tz.unwrap_or("UTC");
        let tz: Tz = tz_name.parse().map_err(|_| CronError::UnknownTimeZone(tz_name.to_string()))?;
        let trimmed = expr.trim();
        let fields: Vec<&str> = if let Some(name) = trimmed.strip_prefix('@') {
            let expanded = match name.to_ascii_lowercase().as_str() {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => return Err(CronError::UnknownMacro(trimmed.to_string())),
            };
            expanded.split_whitespace().collect()
        } else {
            trimmed.split_whitespace().collect()
        };
        if fields.len() != 5 {
            return Err(CronError::FieldCount { expr: expr.to_string(), found: fields.len() });
        }
        let (minutes, _) = MINUTE.parse(fields[0])?;
        let (hours, _) = HOUR.parse(fields[1])?;
        let (days_of_month, dom_star) = DAY_OF_MONTH.parse(fields[2])?;
        let (months, _) = MONTH.parse(fields[3])?;
        let (dow, dow_star) = DAY_OF_WEEK.parse(fields[4])?;
        let days_of_week = ((dow | (dow >> 7)) & 0x7f) as u8;
        let schedule = Schedule {
            expr: trimmed.to_string(),
            tz,
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week,
            dom_star,
            dow_star,
        };
        // With the AND rule, a day-of-month that no chosen month has (31 in April, 30 in
        // February) can never match: refuse it now rather than never fire.
        if schedule.dom_star || schedule.dow_star {
            let possible = (1..=12)
                .filter(|m| schedule.months & (1 << m) != 0)
                .any(|m| schedule.days_of_month & (full(1, days_in_month(m)) as u32) != 0);
            if !possible {
                return Err(CronError::NeverFires(schedule.expr));
            }
        }
        Ok(schedule)
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The expression as written (a macro stays a macro).
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// Whether the hour field covers all 24 hours: such schedules follow real time across
    /// daylight-saving transitions (see the module docs).
    fn every_hour(&self) -> bool {
        self.hours == full(0, 23) as u32
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star { dom && dow } else { dom || dow }
    }

    /// The real instants local date `date` contributes, sorted and without duplicates.
    fn day_instants(&self, date: NaiveDate) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        if !self.day_matches(date) {
            return out;
        }
        let every_hour = self.every_hour();
        for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
            for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                let Some(local) = date.and_hms_opt(hour, minute, 0) else {
                    continue;
                };
                match self.tz.from_local_datetime(&local) {
                    LocalResult::Single(t) => out.push(t.with_timezone(&Utc)),
                    LocalResult::Ambiguous(first, second) => {
                        out.push(first.with_timezone(&Utc));
                        if every_hour {
                            out.push(second.with_timezone(&Utc));
                        }
                    }
                    LocalResult::None => {
                        if !every_hour && let Some(t) = self.first_instant_after_gap(local) {
                            out.push(t);
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first whole local minute after the gap that swallowed `local`, as a real instant.
    fn first_instant_after_gap(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // Gaps are an hour or two in practice; a skipped calendar day (Samoa, 2011) is 24h.
        (1..=48 * 60).find_map(|m| {
            let candidate = local.checked_add_signed(Duration::minutes(m))?;
            self.tz.from_local_datetime(&candidate).earliest().map(|t| t.with_timezone(&Utc))
        })
    }

    fn local_date(&self, instant: DateTime<Utc>) -> NaiveDate {
        instant.with_timezone(&self.tz).date_naive()
    }

    /// The first scheduled instant strictly after `after`, or `None` if there is none (the
    /// expression never matches again within the calendar chrono can represent).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.instants_after(after).next()
    }

    /// Every scheduled instant strictly after `after`, in order.
    pub fn instants_after(&self, after: DateTime<Utc>) -> Instants<'_> {
        // A local day's instants lie within about 15 hours of its UTC midnight, so three days
        // back is enough to catch every instant after `after`.
        let start = self.local_date(after).checked_sub_signed(Duration::days(3));
        Instants { schedule: self, after, next_day: start, pending: BTreeSet::new(), silent_days: 0 }
    }

    /// The latest scheduled instant in `(from, until]`, scanning days backwards.
    fn latest_in(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if until <= from {
            return None;
        }
        let lowest = self.local_date(from).checked_sub_signed(Duration::days(3))?;
        let mut day = self.local_date(until).checked_add_signed(Duration::days(3))?;
        let mut best: Option<DateTime<Utc>> = None;
        let mut extra_days = 0;
        for _ in 0..MAX_SCAN_DAYS {
            if day < lowest {
                break;
            }
            let found = self.day_instants(day).into_iter().filter(|t| *t > from && *t <= until).max();
            if found.is_some() {
                best = best.max(found);
            }
            if best.is_some() {
                // Neighbouring days can interleave by a few hours; two more settle it.
                extra_days += 1;
                if extra_days > 2 {
                    break;
                }
            }
            day = day.pred_opt()?;
        }
        best
    }

    /// Which scheduled instants to run now.
    ///
    /// `last_fired` is the latest instant already run (or handled, see
    /// [`Due::handled_through`]); nothing at or before it, nor at or before `created`, is ever
    /// returned, so storing the answer's `handled_through` makes every instant run at most once
    /// however often, and with whatever `now`, this is called. At most one instant runs per
    /// call: the latest one in `(max(last_fired, created), now]`, when `missed` allows it; the
    /// earlier ones are reported as skipped (at most [`MAX_REPORTED_SKIPS`] of them listed).
    pub fn due(
        &self,
        last_fired: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        missed: MissedRunPolicy,
        created: DateTime<Utc>,
    ) -> Due {
        let from = last_fired.map_or(created, |last| last.max(created));
        let next = self.next_after(now.max(from));
        let Some(latest) = self.latest_in(from, now) else {
            return Due { run: None, skipped: Vec::new(), more_skipped: false, handled_through: None, next };
        };
        let late = now - latest;
        let within_deadline = missed.starting_deadline.is_none_or(|d| late <= d);
        let on_time = late <= missed.grace;
        let runs = within_deadline && (on_time || missed.catch_up == CatchUp::RunOnce);

        let mut skipped: Vec<DateTime<Utc>> =
            self.instants_after(from).take_while(|t| *t < latest).take(MAX_REPORTED_SKIPS + 1).collect();
        let mut more_skipped = skipped.len() > MAX_REPORTED_SKIPS;
        skipped.truncate(MAX_REPORTED_SKIPS);
        if !runs {
            if skipped.len() < MAX_REPORTED_SKIPS && !more_skipped {
                skipped.push(latest);
            } else {
                more_skipped = true;
            }
        }
        Due { run: runs.then_some(latest), skipped, more_skipped, handled_through: Some(latest), next }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz.name())
    }
}

/// The scheduled instants after a point, in order; see [`Schedule::instants_after`].
pub struct Instants<'a> {
    schedule: &'a Schedule,
    after: DateTime<Utc>,
    next_day: Option<NaiveDate>,
    pending: BTreeSet<DateTime<Utc>>,
    silent_days: u32,
}

impl Iterator for Instants<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        loop {
            if let Some(&first) = self.pending.first() {
                // Every instant of a local day not loaded yet is later than this horizon, so
                // anything before it is final.
                let settled = self
                    .next_day
                    .is_none_or(|day| first < day.and_time(Default::default()).and_utc() - Duration::days(1));
                if settled {
                    self.pending.pop_first();
                    self.after = first;
                    return Some(first);
                }
            }
            let day = self.next_day?;
            if self.silent_days > MAX_SCAN_DAYS {
                self.next_day = None;
                continue;
            }
            let after = self.after;
            let before = self.pending.len();
            self.pending.extend(self.schedule.day_instants(day).into_iter().filter(|t| *t > after));
            if self.pending.len() > before {
                self.silent_days = 0;
            } else {
                self.silent_days += 1;
            }
            self.next_day = day.succ_opt();
        }
    }
}

/// What `Schedule::due` does with instants missed while the control service was down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Run nothing missed: only an instant that is on time (within `grace`) runs.
    Skip,
    /// Run the latest missed instant once (within `starting_deadline`), skip the others.
    RunOnce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissedRunPolicy {
    pub catch_up: CatchUp,
    /// An instant later than this is never started, whatever `catch_up` says (Kubernetes'
    /// `startingDeadlineSeconds`). `None`: no limit.
    pub starting_deadline: Option<Duration>,
    /// How late an instant may be and still count as on time rather than missed. Must exceed
    /// the interval at which the control loop evaluates schedules.
    pub grace: Duration,
}

impl MissedRunPolicy {
    pub fn skip() -> MissedRunPolicy {
        MissedRunPolicy { catch_up: CatchUp::Skip, starting_deadline: None, grace: DEFAULT_GRACE }
    }

    pub fn run_once(starting_deadline: Option<Duration>) -> MissedRunPolicy {
        MissedRunPolicy { catch_up: CatchUp::RunOnce, starting_deadline, grace: DEFAULT_GRACE }
    }
}

/// The answer of [`Schedule::due`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The instant to start now, if any.
    pub run: Option<DateTime<Utc>>,
    /// Instants that will never run (oldest first, at most [`MAX_REPORTED_SKIPS`]).
    pub skipped: Vec<DateTime<Utc>>,
    /// More instants were skipped than `skipped` lists.
    pub more_skipped: bool,
    /// The latest instant decided by this call (run or skipped): store it as the next call's
    /// `last_fired` so no instant is considered twice.
    pub handled_through: Option<DateTime<Utc>>,
    /// The next instant after `now`: when to evaluate again.
    pub next: Option<DateTime<Utc>>,
}

/// What to do when a run is due and an earlier run of the same schedule may still be active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    /// Start the new run alongside the old one.
    Allow,
    /// Do not start the new run while the old one is active; record the instant as skipped.
    Forbid,
    /// Stop the old run, then start the new one.
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartDecision {
    Start,
    /// Do not start; record the instant as skipped because the previous run is still active.
    SkipPreviousActive,
    /// Stop the previous run, then start this one.
    StopPreviousThenStart,
}

/// Decides what to do with a due instant, given whether a previous run is still active.
pub fn decide_start(policy: ConcurrencyPolicy, previous_active: bool) -> StartDecision {
    match (policy, previous_active) {
        (_, false) | (ConcurrencyPolicy::Allow, true) => StartDecision::Start,
        (ConcurrencyPolicy::Forbid, true) => StartDecision::SkipPreviousActive,
        (ConcurrencyPolicy::Replace, true) => StartDecision::StopPreviousThenStart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveTime, Timelike, Weekday};
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, Some(tz)).unwrap()
    }

    fn fires(s: &Schedule, after: &str, n: usize) -> Vec<String> {
        s.instants_after(utc(after)).take(n).map(|t| t.to_rfc3339()).collect()
    }

    fn err(expr: &str) -> String {
        Schedule::parse(expr, None).unwrap_err().to_string()
    }

    #[test]
    fn cron_parse_errors_name_the_field_and_token() {
        assert_eq!(err("0 25 * * *"), "cron field 2 (hour): 25 is out of range 0-23");
        assert_eq!(err("60 * * * *"), "cron field 1 (minute): 60 is out of range 0-59");
        assert_eq!(err("0 0 0 * *"), "cron field 3 (day-of-month): 0 is out of range 1-31");
        assert_eq!(err("0 0 * 1-13 *"), "cron field 4 (month): 13 is out of range 1-12");
        assert_eq!(err("0 0 * * 8"), "cron field 5 (day-of-week): 8 is out of range 0-7");
        assert_eq!(err("0 0 * FOO *"), r#"cron field 4 (month): "FOO" is not a number or a month name (JAN-DEC)"#);
        assert_eq!(
            err("0 0 * * MON-FUN"),
            r#"cron field 5 (day-of-week): "MON-FUN" is not a number or a day name (SUN-SAT)"#
        );
        assert_eq!(err("*/0 * * * *"), r#"cron field 1 (minute): step in "*/0" must be at least 1"#);
        assert_eq!(err("*/x * * * *"), r#"cron field 1 (minute): "*/x" is not a number"#);
        assert_eq!(err("0 5-2 * * *"), r#"cron field 2 (hour): range "5-2" starts after it ends"#);
        assert_eq!(err("0 0,,1 * * *"), r#"cron field 2 (hour): "" is not a number"#);
        assert_eq!(
            err("* * * *"),
            r#"cron expression "* * * *" has 4 fields; expected 5 (minute hour day-of-month month day-of-week) or a macro such as @daily"#
        );
        assert_eq!(
            err("@reboot"),
            r#"unknown cron macro "@reboot"; expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"#
        );
        assert_eq!(
            Schedule::parse("@daily", Some("Mars/Olympus")).unwrap_err().to_string(),
            r#"unknown time zone "Mars/Olympus"; expected an IANA name such as Europe/Berlin or UTC"#
        );
        assert_eq!(
            err("0 0 30 2 *"),
            r#"cron expression "0 0 30 2 *" never fires: none of its days of the month occur in its months"#
        );
        assert_eq!(
            err("0 0 31 APR,JUN,SEP,NOV *"),
            r#"cron expression "0 0 31 APR,JUN,SEP,NOV *" never fires: none of its days of the month occur in its months"#
        );
    }

    #[test]
    fn cron_parse_good_expressions() {
        // Both restricted: the OR rule makes February 30 harmless.
        Schedule::parse("0 0 30 2 MON", None).unwrap();
        let s = Schedule::parse(" 1-10/3,20,*/25  0  * jan-Mar mon-fri ", None).unwrap();
        assert_eq!((0..60).filter(|m| s.minutes & (1 << m) != 0).collect::<Vec<_>>(), vec![0, 1, 4, 7, 10, 20, 25, 50]);
        assert_eq!(s.months, 0b1110);
        assert_eq!(s.days_of_week, 0b0111110);
        assert_eq!(s.time_zone(), chrono_tz::UTC);
        // `a/step` runs from a to the end of the range.
        let s = Schedule::parse("5/20 * * * *", None).unwrap();
        assert_eq!(s.minutes, 1 << 5 | 1 << 25 | 1 << 45);
        // 0 and 7 are both Sunday; `5-7` wraps to Friday, Saturday, Sunday.
        for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun"] {
            assert_eq!(Schedule::parse(sunday, None).unwrap().days_of_week, 1);
        }
        assert_eq!(Schedule::parse("0 0 * * 5-7", None).unwrap().days_of_week, 0b1100001);
        let berlin = sched("@daily", "Europe/Berlin");
        assert_eq!(berlin.to_string(), "@daily (Europe/Berlin)");
        assert_eq!(berlin.expression(), "@daily");
    }

    #[test]
    fn cron_macros_expand() {
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        for (mac, expr) in cases {
            let (a, b) = (sched(mac, "UTC"), sched(expr, "UTC"));
            assert_eq!(fires(&a, "2026-05-17T10:20:00Z", 5), fires(&b, "2026-05-17T10:20:00Z", 5), "{mac}");
        }
    }

    #[test]
    fn cron_next_after_plain_cases() {
        let s = sched("*/15 * * * *", "UTC");
        assert_eq!(s.next_after(utc("2026-05-17T10:07:00Z")), Some(utc("2026-05-17T10:15:00Z")));
        // Strictly after: an instant exactly on the schedule moves to the next one.
        assert_eq!(s.next_after(utc("2026-05-17T10:15:00Z")), Some(utc("2026-05-17T10:30:00Z")));
        assert_eq!(s.next_after(utc("2026-05-17T10:14:59.999Z")), Some(utc("2026-05-17T10:15:00Z")));
        // Weekdays at 09:00 from a Friday afternoon: Monday.
        let s = sched("0 9 * * MON-FRI", "UTC");
        assert_eq!(fires(&s, "2026-05-15T10:00:00Z", 2), ["2026-05-18T09:00:00+00:00", "2026-05-19T09:00:00+00:00"]);
        // Year rollover.
        let s = sched("@yearly", "UTC");
        assert_eq!(s.next_after(utc("2026-12-31T23:59:59Z")), Some(utc("2027-01-01T00:00:00Z")));
        // In a zone: 09:00 Berlin is 07:00 UTC in summer, 08:00 in winter.
        let s = sched("0 9 * * *", "Europe/Berlin");
        assert_eq!(s.next_after(utc("2026-07-01T00:00:00Z")), Some(utc("2026-07-01T07:00:00Z")));
        assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), Some(utc("2026-01-01T08:00:00Z")));
    }

    #[test]
    fn cron_month_and_day_edges() {
        // February 29 comes every four years, but not in 2100.
        let s = sched("0 0 29 2 *", "UTC");
        assert_eq!(s.next_after(utc("2025-01-01T00:00:00Z")), Some(utc("2028-02-29T00:00:00Z")));
        assert_eq!(s.next_after(utc("2096-03-01T00:00:00Z")), Some(utc("2104-02-29T00:00:00Z")));
        // The 31st skips the months that have no 31st.
        let s = sched("0 12 31 * *", "UTC");
        assert_eq!(
            fires(&s, "2026-04-01T00:00:00Z", 3),
            ["2026-05-31T12:00:00+00:00", "2026-07-31T12:00:00+00:00", "2026-08-31T12:00:00+00:00"]
        );
        // Feb 29 on a Monday, with the AND rule (`*/28` starts with `*`): 1st or 29th, Monday.
        let s = sched("0 0 */28 2 MON", "UTC");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 4),
            [
                "2027-02-01T00:00:00+00:00",
                "2038-02-01T00:00:00+00:00",
                "2044-02-01T00:00:00+00:00",
                "2044-02-29T00:00:00+00:00"
            ]
        );
    }

    #[test]
    fn cron_vixie_day_rule() {
        let year = |s: &Schedule| -> Vec<NaiveDate> {
            s.instants_after(utc("2025-12-31T23:59:00Z"))
                .take_while(|t| t.year() == 2026)
                .map(|t| t.date_naive())
                .collect()
        };
        let days = |keep: &dyn Fn(NaiveDate) -> bool| -> Vec<NaiveDate> {
            NaiveDate::from_ymd_opt(2026, 1, 1)
                .unwrap()
                .iter_days()
                .take_while(|d| d.year() == 2026)
                .filter(|d| keep(*d))
                .collect()
        };
        // Both restricted: the 13th OR a Friday.
        assert_eq!(year(&sched("0 0 13 * FRI", "UTC")), days(&|d| d.day() == 13 || d.weekday() == Weekday::Fri));
        // Day-of-month `*`: only Fridays.
        assert_eq!(year(&sched("0 0 * * FRI", "UTC")), days(&|d| d.weekday() == Weekday::Fri));
        // Day-of-week `*`: only the 13th.
        assert_eq!(year(&sched("0 0 13 * *", "UTC")), days(&|d| d.day() == 13));
        // A field starting with `*` is "unrestricted" to crontab(5): odd days AND Fridays.
        assert_eq!(year(&sched("0 0 */2 * FRI", "UTC")), days(&|d| d.day() % 2 == 1 && d.weekday() == Weekday::Fri));
    }

    #[test]
    fn cron_spring_gap_fires_once_at_the_end_of_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let s = sched("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // 02:30 does not exist: 03:00 CEST
                "2026-03-30T00:30:00+00:00", // 02:30 CEST again
            ]
        );
        // America/New_York, 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        let s = sched("30 2 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-03-07T00:00:00Z", 3),
            ["2026-03-07T07:30:00+00:00", "2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00",]
        );
        // Several gap times, and the end of the gap itself, still fire once.
        let s = sched("0,30 2,3 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-28T23:00:00Z", 3),
            [
                "2026-03-29T01:00:00+00:00", // 02:00, 02:30 and 03:00 CEST
                "2026-03-29T01:30:00+00:00", // 03:30 CEST
                "2026-03-30T00:00:00+00:00", // 02:00 CEST the next day
            ]
        );
        // Schedules outside the gap are untouched.
        let s = sched("30 4 * * *", "Europe/Berlin");
        assert_eq!(s.next_after(utc("2026-03-28T23:00:00Z")), Some(utc("2026-03-29T02:30:00Z")));
    }

    #[test]
    fn cron_autumn_repeat_fires_once_at_the_first_occurrence() {
        // America/New_York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens at
        // 05:30 UTC (EDT) and again at 06:30 UTC (EST).
        let s = sched("30 1 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-10-31T00:00:00Z", 3),
            ["2026-10-31T05:30:00+00:00", "2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00",]
        );
        // Asking from between the two occurrences does not find the second one.
        assert_eq!(s.next_after(utc("2026-11-01T05:30:00Z")), Some(utc("2026-11-02T06:30:00Z")));
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET.
        let s = sched("30 2 * * *", "Europe/Berlin");
        assert_eq!(fires(&s, "2026-10-24T12:00:00Z", 2), ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]);
        // A fixed hour with a minute wildcard runs that hour once, not twice.
        let s = sched("*/15 1 * * *", "America/New_York");
        let day: Vec<_> =
            s.instants_after(utc("2026-11-01T04:00:00Z")).take_while(|t| *t < utc("2026-11-01T12:00:00Z")).collect();
        assert_eq!(day.len(), 4);
        assert_eq!(day[0], utc("2026-11-01T05:00:00Z"));
    }

    /// Fires of `s` in `[from, until)`.
    fn between(s: &Schedule, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        s.instants_after(from - Duration::nanoseconds(1)).take_while(|t| *t < until).collect()
    }

    fn local_midnight(tz: Tz, date: &str) -> DateTime<Utc> {
        let date: NaiveDate = date.parse().unwrap();
        tz.from_local_datetime(&date.and_time(NaiveTime::MIN)).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_every_quarter_hour_follows_real_time_through_transitions() {
        for (tz_name, spring, autumn, normal) in [
            ("Europe/Berlin", "2026-03-29", "2026-10-25", "2026-06-01"),
            ("America/New_York", "2026-03-08", "2026-11-01", "2026-06-01"),
        ] {
            let s = sched("*/15 * * * *", tz_name);
            let tz = s.time_zone();
            // A local calendar day: 23 real hours in spring, 25 in autumn.
            for (date, next, expected) in [(normal, "2026-06-02", 96), (spring, "", 92), (autumn, "", 100)] {
                let start = local_midnight(tz, date);
                let end = if next.is_empty() {
                    local_midnight(tz, &(date.parse::<NaiveDate>().unwrap().succ_opt().unwrap()).to_string())
                } else {
                    local_midnight(tz, next)
                };
                let got = between(&s, start, end);
                assert_eq!(got.len(), expected, "{tz_name} {date}");
            }
            // Any 24 real hours across a transition: 96 fires, each 15 real minutes apart.
            for date in [spring, autumn] {
                let start = local_midnight(tz, date) + Duration::hours(-6);
                let got = between(&s, start, start + Duration::hours(24));
                assert_eq!(got.len(), 96, "{tz_name} 24h from {start}");
                assert!(got.windows(2).all(|w| w[1] - w[0] == Duration::minutes(15)), "{tz_name} {date}: {got:?}");
            }
        }
        // Hourly: 25 fires on New York's fall-back day, 23 on the spring-forward day.
        let s = sched("0 * * * *", "America/New_York");
        let tz = s.time_zone();
        let count = |a: &str, b: &str| between(&s, local_midnight(tz, a), local_midnight(tz, b)).len();
        assert_eq!(count("2026-11-01", "2026-11-02"), 25);
        assert_eq!(count("2026-03-08", "2026-03-09"), 23);
        // 30 minutes past every hour: 02:30 is simply absent in the gap, no 03:00 fire.
        let s = sched("30 * * * *", "Europe/Berlin");
        assert_eq!(fires(&s, "2026-03-29T00:00:00Z", 2), ["2026-03-29T00:30:00+00:00", "2026-03-29T01:30:00+00:00"]);
    }

    fn at(s: &str) -> DateTime<Utc> {
        utc(&format!("2026-05-17T{s}Z"))
    }

    #[test]
    fn cron_due_after_downtime() {
        let hourly = sched("0 * * * *", "UTC");
        let created = utc("2026-01-01T00:00:00Z");
        let last = Some(at("10:00:00"));
        let now = at("13:20:00");

        let due = hourly.due(last, now, MissedRunPolicy::skip(), created);
        assert_eq!(due.run, None);
        assert_eq!(due.skipped, [at("11:00:00"), at("12:00:00"), at("13:00:00")]);
        assert!(!due.more_skipped);
        assert_eq!(due.handled_through, Some(at("13:00:00")));
        assert_eq!(due.next, Some(at("14:00:00")));

        let due = hourly.due(last, now, MissedRunPolicy::run_once(None), created);
        assert_eq!(due.run, Some(at("13:00:00")));
        assert_eq!(due.skipped, [at("11:00:00"), at("12:00:00")]);
        assert_eq!(due.handled_through, Some(at("13:00:00")));

        // Within the starting deadline it runs; beyond it, it is skipped.
        let within = MissedRunPolicy::run_once(Some(Duration::minutes(30)));
        assert_eq!(hourly.due(last, now, within, created).run, Some(at("13:00:00")));
        let beyond = MissedRunPolicy::run_once(Some(Duration::minutes(10)));
        let due = hourly.due(last, now, beyond, created);
        assert_eq!(due.run, None);
        assert_eq!(due.skipped.len(), 3);

        // On time (within the grace), Skip runs it too.
        let due = hourly.due(last, at("11:00:30"), MissedRunPolicy::skip(), created);
        assert_eq!(due.run, Some(at("11:00:00")));
        assert!(due.skipped.is_empty());
        // A deadline shorter than the grace wins.
        let strict = MissedRunPolicy { starting_deadline: Some(Duration::seconds(10)), ..MissedRunPolicy::skip() };
        assert_eq!(hourly.due(last, at("11:00:30"), strict, created).run, None);

        // Nothing due yet.
        let due = hourly.due(last, at("10:59:59"), MissedRunPolicy::skip(), created);
        assert_eq!(due.run, None);
        assert_eq!(due.handled_through, None);
        assert_eq!(due.next, Some(at("11:00:00")));
    }

    #[test]
    fn cron_due_never_before_creation() {
        let hourly = sched("0 * * * *", "UTC");
        let due = hourly.due(None, at("13:00:10"), MissedRunPolicy::run_once(None), at("12:30:00"));
        assert_eq!(due.run, Some(at("13:00:00")));
        assert!(due.skipped.is_empty());
        // Created exactly on an instant: that instant is not run.
        let due = hourly.due(None, at("12:00:10"), MissedRunPolicy::run_once(None), at("12:00:00"));
        assert_eq!(due.run, None);
        assert_eq!(due.next, Some(at("13:00:00")));
    }

    #[test]
    fn cron_due_bounds_the_work_after_long_downtime() {
        let minutely = sched("* * * * *", "UTC");
        let due = minutely.due(
            Some(utc("2025-05-17T00:00:00Z")),
            at("12:00:30"),
            MissedRunPolicy::run_once(None),
            utc("2020-01-01T00:00:00Z"),
        );
        assert_eq!(due.run, Some(at("12:00:00")));
        assert_eq!(due.skipped.len(), MAX_REPORTED_SKIPS);
        assert_eq!(due.skipped[0], utc("2025-05-17T00:01:00Z"));
        assert!(due.more_skipped);
        assert_eq!(due.handled_through, Some(at("12:00:00")));
    }

    #[test]
    fn cron_due_runs_every_instant_once_when_polled() {
        // Poll every 7 seconds for two days, each poll twice, feeding back handled_through:
        // the runs are exactly the schedule's instants, each once.
        let s = sched("*/5 1,2 * * *", "America/New_York");
        let created = utc("2026-10-31T00:00:00Z");
        let mut last = None;
        let mut runs = Vec::new();
        let mut now = created;
        while now < utc("2026-11-02T12:00:00Z") {
            for _ in 0..2 {
                let due = s.due(last, now, MissedRunPolicy::skip(), created);
                assert!(due.skipped.is_empty(), "nothing is missed when polling: {due:?}");
                runs.extend(due.run);
                last = due.handled_through.or(last);
            }
            now += Duration::seconds(7);
        }
        let expected = between(&s, created, now);
        assert_eq!(runs, expected);
        // 24 a day in hours 1 and 2, fall-back day included (01:xx once), over three days.
        assert_eq!(runs.len(), 3 * 24);
    }

    #[test]
    fn cron_concurrency_decisions() {
        use ConcurrencyPolicy::*;
        use StartDecision::*;
        assert_eq!(decide_start(Allow, false), Start);
        assert_eq!(decide_start(Allow, true), Start);
        assert_eq!(decide_start(Forbid, false), Start);
        assert_eq!(decide_start(Forbid, true), SkipPreviousActive);
        assert_eq!(decide_start(Replace, false), Start);
        assert_eq!(decide_start(Replace, true), StopPreviousThenStart);
    }

    /// Brute force in UTC: every minute, checked field by field.
    fn brute_next(s: &Schedule, after: DateTime<Utc>, limit_days: i64) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0).unwrap().with_nanosecond(0).unwrap() + Duration::minutes(1);
        let end = after + Duration::days(limit_days);
        while t < end {
            let date = t.date_naive();
            if s.minutes & (1 << t.minute()) != 0 && s.hours & (1 << t.hour()) != 0 && s.day_matches(date) {
                return Some(t);
            }
            t += Duration::minutes(1);
        }
        None
    }

    fn field(values: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::sample::select(values).prop_map(str::to_string)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn cron_next_after_matches_brute_force_in_utc(
            minute in field(&["*", "0", "*/7", "5,35", "10-20/5", "59"]),
            hour in field(&["*", "0", "*/5", "9-17", "23", "3,4"]),
            dom in field(&["*", "1", "15", "31", "*/10", "28-31"]),
            month in field(&["*", "2", "1-6", "*/3", "DEC"]),
            dow in field(&["*", "0", "MON-FRI", "6,7", "*/2"]),
            offset_minutes in 0i64..(366 * 24 * 60),
            seconds in 0u32..60,
        ) {
            let expr = format!("{minute} {hour} {dom} {month} {dow}");
            let Ok(s) = Schedule::parse(&expr, None) else { return Ok(()) };
            let after = utc("2026-01-01T00:00:00Z") + Duration::minutes(offset_minutes) + Duration::seconds(seconds as i64);
            if let Some(expected) = brute_next(&s, after, 400) {
                prop_assert_eq!(s.next_after(after), Some(expected), "{}", expr);
            }
        }

        #[test]
        fn cron_due_never_runs_an_instant_twice(
            polls in proptest::collection::vec((0i64..(3 * 24 * 60), any::<bool>()), 1..60),
            run_once in any::<bool>(),
            tz in field(&["UTC", "Europe/Berlin", "America/New_York"]),
        ) {
            // Polls at random times, possibly out of order (a clock that steps back), across
            // the 2026 autumn transitions in Berlin and New York.
            let s = Schedule::parse("*/20 0-3 * * *", Some(&tz)).unwrap();
            let created = utc("2026-10-24T00:00:00Z");
            let policy = if run_once { MissedRunPolicy::run_once(None) } else { MissedRunPolicy::skip() };
            let mut last: Option<DateTime<Utc>> = None;
            let mut runs = Vec::new();
            for (minute, _) in &polls {
                let now = created + Duration::minutes(*minute);
                let due = s.due(last, now, policy, created);
                if let Some(run) = due.run {
                    prop_assert!(run <= now && run > created);
                    prop_assert!(last.is_none_or(|l| run > l));
                    runs.push(run);
                }
                if let Some(h) = due.handled_through {
                    prop_assert!(last.is_none_or(|l| h > l));
                    last = Some(h);
                }
            }
            let mut sorted = runs.clone();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), runs.len());
        }
    }
}
