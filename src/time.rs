//! Times as clients see them: ISO 8601 UTC strings with milliseconds, like JavaScript's
//! `Date.prototype.toISOString`.

use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

const ISO: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats a UTC time as `2026-01-02T03:04:05.678Z`.
pub fn iso(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(ISO)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The current time as an ISO string.
pub fn iso_now() -> String {
    iso(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_has_milliseconds_and_z() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_000_000).unwrap();
        assert_eq!(super::iso(t), "2023-11-14T22:13:20.123Z");
    }
}
