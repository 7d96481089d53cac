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
