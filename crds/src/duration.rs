//! Go-style durations (`300ms`, `5m`, `1h30m`), as Kubernetes `metav1.Duration` spells them.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "missing unit in duration {0:?}; valid units are \"ns\", \"us\", \"ms\", \"s\", \"m\", \"h\""
    )]
    MissingUnit(String),
    #[error(
        "unknown unit {unit:?} in duration {input:?}; valid units are \"ns\", \"us\", \"ms\", \"s\", \"m\", \"h\""
    )]
    UnknownUnit { unit: String, input: String },
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("negative duration {0:?}")]
    Negative(String),
}

/// Parses a Go duration such as `5m`, `1h30m`, `1.5s` or `0`. Negative values are refused.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(input.to_string()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::Invalid(input.to_string()));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| DurationError::Invalid(input.to_string()))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    input: input.to_string(),
                });
            }
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(DurationError::Invalid(input.to_string()));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("5"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(
            parse("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("-5m"), Err(DurationError::Negative(_))));
        assert!(matches!(parse("m"), Err(DurationError::Invalid(_))));
    }
}
