//! Human-friendly quantities used in specs: durations ("500ms", "2s", "1m") and byte sizes
//! ("64Mi", "1G", 1048576). Parsing is strict so that a typo is an error, not a surprise.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A duration written as a string with a unit: `ms`, `s`, `m` or `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("duration {text:?} must start with a whole number"))?;
        let factor = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!("duration {text:?} has unknown unit {unit:?} (use ms, s, m, h)"));
            }
        };
        number.checked_mul(factor).map(Millis).ok_or_else(|| format!("duration {text:?} is too large"))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) { write!(f, "{}s", self.0 / 1000) } else { write!(f, "{}ms", self.0) }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Millis::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written as an integer or a string with a binary (`Ki`, `Mi`, `Gi`) or
/// decimal (`K`, `M`, `G`) suffix, as in Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("size {text:?} must start with a whole number"))?;
        let factor: u64 = match unit {
            "" => 1,
            "K" => 1000,
            "M" => 1000_u64.pow(2),
            "G" => 1000_u64.pow(3),
            "T" => 1000_u64.pow(4),
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => {
                return Err(format!("size {text:?} has unknown unit {unit:?} (use Ki, Mi, Gi or K, M, G)"));
            }
        };
        number.checked_mul(factor).map(Bytes).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, shift) in [("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 67108864, \"64Mi\" or \"1G\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v).map(Bytes).map_err(|_| E::custom(format!("size {v} must not be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Millis::parse("500ms"), Ok(Millis(500)));
        assert_eq!(Millis::parse("2s"), Ok(Millis(2000)));
        assert_eq!(Millis::parse("1m"), Ok(Millis(60_000)));
        assert!(Millis::parse("5").unwrap_err().contains("needs a unit"));
        assert!(Millis::parse("5d").unwrap_err().contains("unknown unit"));
        assert!(Millis::parse("s").is_err());
    }

    #[test]
    fn durations_round_trip_through_display() {
        for text in ["250ms", "3s", "1500ms"] {
            assert_eq!(Millis::parse(text).map(|m| m.to_string()), Ok(text.to_string()));
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_suffixes() {
        assert_eq!(Bytes::parse("64Mi"), Ok(Bytes(64 << 20)));
        assert_eq!(Bytes::parse("1G"), Ok(Bytes(1_000_000_000)));
        assert_eq!(Bytes::parse("4096"), Ok(Bytes(4096)));
        assert!(Bytes::parse("12Xi").is_err());
        assert!(Bytes::parse("99999999999Ti").unwrap_err().contains("too large"));
        assert_eq!(Bytes(64 << 20).to_string(), "64Mi");
    }
}
