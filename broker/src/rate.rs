//! Config values where `0` turns a limit off: typed so that code cannot forget the case.
//!
//! In the file and in `HOOKWIRE_*` variables they stay plain integers (`0` = off), so
//! config keys and shipped files do not change.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Events per second; `None` (written `0`) turns the limit off, or, where a namespace
/// can override a node-wide rate, inherits it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate(Option<NonZeroU32>);

/// A most-at-once count; `None` (written `0`) means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap(Option<NonZeroU32>);

macro_rules! zero_is_none {
    ($ty:ident) => {
        impl $ty {
            pub const OFF: Self = Self(None);

            pub const fn new(n: u32) -> Self {
                Self(NonZeroU32::new(n))
            }

            pub fn get(self) -> Option<NonZeroU32> {
                self.0
            }

            /// The number as written in config (0 when off).
            pub fn raw(self) -> u32 {
                self.0.map_or(0, NonZeroU32::get)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.raw())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u32(self.raw())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                u32::deserialize(d).map(Self::new)
            }
        }
    };
}

zero_is_none!(Rate);
zero_is_none!(Cap);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_off_and_round_trips() {
        #[derive(Serialize, Deserialize)]
        struct T {
            r: Rate,
            c: Cap,
        }
        let t: T = toml::from_str("r = 0\nc = 5").unwrap();
        assert_eq!(t.r.get(), None);
        assert_eq!(t.c.get().map(NonZeroU32::get), Some(5));
        assert_eq!(toml::to_string(&t).unwrap(), "r = 0\nc = 5\n");
    }
}
