//! Points in time for `--from` and `--to`: RFC 3339 (`2026-11-28T10:00:00Z`),
//! relative to now (`-10m`), or epoch milliseconds (`@1700000000000`).

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses a TIME; `None` if `s` does not look like one of the three forms,
/// `Some(Err)` if it does but is wrong.
pub fn parse_time(s: &str, now_ms: i64) -> Option<Result<i64, String>> {
    if let Some(ms) = s.strip_prefix('@') {
        return Some(
            ms.parse::<i64>()
                .map_err(|_| format!("{s:?}: expected @ followed by epoch milliseconds")),
        );
    }
    if let Some(rel) = s.strip_prefix('-') {
        let digits = rel.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &rel[digits.len()..];
        if digits.is_empty() || unit.is_empty() {
            return None;
        }
        let unit_ms: i64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Some(Err(format!(
                    "{s:?}: relative times use ms, s, m, h or d (e.g. -10m)"
                )));
            }
        };
        return Some(
            digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .map(|d| now_ms - d)
                .ok_or_else(|| format!("{s:?}: the number is too large")),
        );
    }
    if s.len() >= 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' {
        return Some(parse_rfc3339(s).ok_or_else(|| {
            format!(
                "{s:?}: expected RFC 3339, e.g. 2026-11-28T10:00:00Z or 2026-11-28T10:00:00+01:00"
            )
        }));
    }
    None
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM[:SS[.fff]]` followed by `Z` or `±HH:MM`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(y, m, day);
    let Some(rest) = rest else {
        return Some(days * 86_400_000);
    };
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (c, sign * (num(oh)? * 3_600_000 + num(om)? * 60_000))
    };
    let mut parts = clock.splitn(3, ':');
    let h = num(parts.next()?)?;
    let min = num(parts.next()?)?;
    let (sec, frac_ms) = match parts.next() {
        None => (0, 0),
        Some(sec) => match sec.split_once('.') {
            None => (num(sec)?, 0),
            Some((whole, frac)) => {
                num(frac)?;
                let ms: String = frac.chars().chain("000".chars()).take(3).collect();
                (num(whole)?, num(&ms)?)
            }
        },
    };
    if h > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days * 86_400_000 + h * 3_600_000 + min * 60_000 + sec * 1_000 + frac_ms - offset_ms)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Epoch milliseconds as RFC 3339 in UTC with milliseconds.
pub fn format_rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("@123", now), Some(Ok(123)));
        assert_eq!(parse_time("-10m", now), Some(Ok(now - 600_000)));
        assert_eq!(parse_time("-2h", now), Some(Ok(now - 7_200_000)));
        assert_eq!(parse_time("-500ms", now), Some(Ok(now - 500)));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now),
            Some(Ok(1_700_000_000_000))
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00", now),
            Some(Ok(1_700_000_000_500))
        );
        assert_eq!(parse_time("1970-01-02", now), Some(Ok(86_400_000)));
        assert!(matches!(parse_time("-10y", now), Some(Err(_))));
        assert!(matches!(
            parse_time("2023-13-01T00:00:00Z", now),
            Some(Err(_))
        ));
        assert_eq!(parse_time("beginning", now), None);
        assert_eq!(parse_time("-5", now), None);
        assert_eq!(parse_time("42", now), None);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(
            format_rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        for ms in [0, 951_782_400_000, 1_700_000_000_123, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }
    }
}
