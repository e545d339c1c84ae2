//! [`Hooks`]: the set of hooks a plugin implements, which the crate names to the
//! broker in `plugin-info.hooks`.

/// A set of hooks, e.g. `Hooks::PUBLISH.union(Hooks::SUBSCRIBE)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks(u8);

/// The hooks, each with its name in the contract (`on-NAME`).
const NAMES: [(Hooks, &str); 7] = [
    (Hooks::CONNECT, "connect"),
    (Hooks::SUBSCRIBE, "subscribe"),
    (Hooks::UNSUBSCRIBE, "unsubscribe"),
    (Hooks::PUBLISH, "publish"),
    (Hooks::REFRESH, "refresh"),
    (Hooks::HISTORY, "history"),
    (Hooks::DISCONNECT, "disconnect"),
];

impl Hooks {
    pub const CONNECT: Self = Self(1);
    pub const SUBSCRIBE: Self = Self(1 << 1);
    pub const UNSUBSCRIBE: Self = Self(1 << 2);
    pub const PUBLISH: Self = Self(1 << 3);
    pub const REFRESH: Self = Self(1 << 4);
    pub const HISTORY: Self = Self(1 << 5);
    pub const DISCONNECT: Self = Self(1 << 6);

    /// Both sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every hook of `other` is in this set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The hooks' names in the contract, e.g. `["subscribe", "publish"]`.
    pub fn names(self) -> Vec<String> {
        NAMES
            .iter()
            .filter(|(hook, _)| self.contains(*hook))
            .map(|(_, name)| (*name).to_string())
            .collect()
    }
}

impl std::ops::BitOr for Hooks {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        self.union(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_name_their_hooks_in_contract_order() {
        let set = Hooks::PUBLISH.union(Hooks::CONNECT) | Hooks::HISTORY;
        assert_eq!(set.names(), ["connect", "publish", "history"]);
        assert!(set.contains(Hooks::PUBLISH));
        assert!(!set.contains(Hooks::REFRESH));
        assert!(Hooks::default().names().is_empty());
    }
}
