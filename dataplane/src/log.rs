//! The daemon's log lines: on stderr, each stamped with the UTC time it was written, and never a
//! panic. `eprintln!` panics when stderr is gone (a pipe whose reader exited, a logger that
//! died), which took a daemon down without removing its namespaces, TAPs or socket; a line
//! nobody can read is dropped instead.

use std::fmt;
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `line` to stderr after the current UTC time (`2026-12-01T18:40:12.345Z`).
pub fn line(line: fmt::Arguments<'_>) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = utc_timestamp(since_epoch.as_secs(), since_epoch.subsec_millis());
    let _ = writeln!(io::stderr().lock(), "{stamp} {line}");
}

/// RFC 3339 UTC time of `secs` after the Unix epoch, with milliseconds.
pub fn utc_timestamp(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`, for
/// days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against Python's `datetime.fromtimestamp(t, UTC)`.
    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(utc_timestamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_timestamp(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(
            utc_timestamp(1_796_150_412, 345),
            "2026-12-01T18:40:12.345Z"
        );
        assert_eq!(
            utc_timestamp(4_107_542_399, 999),
            "2100-02-28T23:59:59.999Z"
        );
    }
}
