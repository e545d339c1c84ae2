//! `HOOKWIRE_*` environment overrides: every config key has one.
//!
//! The variable for a key is `HOOKWIRE_` + its dotted path with `.` and `-` turned into
//! `_`, upper-cased: `limits.max_frame_bytes` → `HOOKWIRE_LIMITS_MAX_FRAME_BYTES`,
//! `namespaces.chat.presence` → `HOOKWIRE_NAMESPACES_CHAT_PRESENCE`, `ws_addr` →
//! `HOOKWIRE_WS_ADDR`. Lists are comma-separated.

use std::collections::BTreeMap;

use super::{Config, Error, NamespaceConfig, PluginModuleConfig, PluginsConfig};

/// Variables read elsewhere (secrets and the config path itself), never config keys.
pub const RESERVED: &[&str] = &[
    "HOOKWIRE_CONFIG",
    "HOOKWIRE_JWT_SECRET",
    "HOOKWIRE_API_KEY",
    "HOOKWIRE_ADMIN_KEY",
    "HOOKWIRE_NATS_TOKEN",
    "HOOKWIRE_NATS_PASSWORD",
];

/// Names from `server-api.md` for keys whose generated name differs.
const ALIASES: &[(&str, &str)] = &[("HOOKWIRE_NATS_URL", "HOOKWIRE_CLUSTER_NATS_URL")];

/// A snapshot of the `HOOKWIRE_*` variables (tests build one by hand).
#[derive(Clone, Debug, Default)]
pub struct EnvOverrides {
    vars: BTreeMap<String, String>,
}

impl EnvOverrides {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("HOOKWIRE_"))
                .collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str)
    }

    /// Applies the overrides to `table`; `base` (the file as parsed) says which namespaces exist.
    /// Returns the new table, the variables applied and the ones that match no key.
    pub(super) fn apply(
        &self,
        mut table: toml::Table,
        base: &Config,
    ) -> Result<(toml::Table, Vec<String>, Vec<String>), Error> {
        let schema = Config {
            namespaces: base
                .namespaces
                .keys()
                .map(|k| (k.clone(), NamespaceConfig::default()))
                .collect(),
            plugins: PluginsConfig {
                modules: base
                    .plugins
                    .modules
                    .keys()
                    .map(|k| (k.clone(), PluginModuleConfig::default()))
                    .collect(),
                ..PluginsConfig::default()
            },
            ..Config::default()
        };
        let schema = toml::Table::try_from(&schema).expect("config serializes to TOML");
        let mut leaves = Vec::new();
        collect_leaves(&schema, &mut Vec::new(), &mut leaves);

        let mut applied = Vec::new();
        for (path, kind) in leaves {
            let var = var_name(&path);
            let alias = ALIASES.iter().find(|(_, key)| *key == var).map(|(a, _)| *a);
            // The key's own variable wins over its alias.
            let (var, raw) = match (self.vars.get(&var), alias) {
                (Some(raw), _) => (var, raw),
                (None, Some(alias)) => match self.vars.get(alias) {
                    Some(raw) => (alias.to_string(), raw),
                    None => continue,
                },
                (None, None) => continue,
            };
            let value = parse_as(kind, raw).map_err(|message| Error::Env {
                var: var.clone(),
                value: raw.clone(),
                message,
            })?;
            insert(&mut table, &path, value);
            applied.push(var);
        }
        let unknown = self
            .vars
            .keys()
            .filter(|k| !applied.contains(k) && !RESERVED.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok((table, applied, unknown))
    }
}

pub fn var_name(path: &[String]) -> String {
    let mut var = String::from("HOOKWIRE");
    for part in path {
        var.push('_');
        var.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
    }
    var
}

fn collect_leaves<'a>(
    table: &'a toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'a toml::Value)>,
) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            toml::Value::Table(t) => collect_leaves(t, prefix, out),
            leaf => out.push((prefix.clone(), leaf)),
        }
        prefix.pop();
    }
}

fn parse_as(kind: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match kind {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| "expected a whole number".to_string())?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err("expected true or false".into()),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        other => {
            return Err(format!(
                "settings of type {} cannot be set from the environment",
                other.type_str()
            ));
        }
    })
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("leaf paths are not empty");
    let mut cur = table;
    for part in parents {
        let entry = cur
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        cur = entry.as_table_mut().expect("just made a table");
    }
    cur.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(file: &str, vars: &[(&str, &str)]) -> Result<super::super::LoadedConfig, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        Config::load(
            &path,
            false,
            &EnvOverrides::from_pairs(vars.iter().copied()),
        )
    }

    #[test]
    fn nats_url_joins_a_cluster_and_its_own_key_wins() {
        let c = load(
            "",
            &[(
                "HOOKWIRE_NATS_URL",
                "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
            )],
        )
        .unwrap()
        .config;
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.nats_url.len(), 2);
        let c = load(
            "",
            &[
                ("HOOKWIRE_NATS_URL", "nats://127.0.0.1:1"),
                ("HOOKWIRE_CLUSTER_NATS_URL", "nats://127.0.0.1:2"),
            ],
        )
        .unwrap()
        .config;
        assert_eq!(c.cluster.nats_url, ["nats://127.0.0.1:2"]);
        assert!(
            !load("", &[]).unwrap().config.cluster.enabled(),
            "single node by default"
        );
        let bad = load("", &[("HOOKWIRE_NATS_URL", "http://x")]).unwrap_err();
        assert!(bad.to_string().contains("nats://host:port"), "{bad}");
    }

    #[test]
    fn every_key_has_a_variable() {
        let loaded = load(
            "[namespaces.chat]\nhistory_size = 5\nhistory_ttl_secs = 5\n",
            &[
                ("HOOKWIRE_WS_ADDR", "127.0.0.1:0"),
                ("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "1024"),
                ("HOOKWIRE_NAMESPACES_CHAT_PRESENCE", "true"),
                ("HOOKWIRE_AUTH_ALGORITHMS", "HS256, RS256"),
                ("HOOKWIRE_AUTH_JWKS_FILE", "/k.json"),
                ("HOOKWIRE_DEFAULT_NAMESPACE", "chat"),
                ("HOOKWIRE_JWT_SECRET", "not a config key"),
                ("HOOKWIRE_NO_SUCH_THING", "x"),
            ],
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.ws_addr.to_string(), "127.0.0.1:0");
        assert_eq!(c.limits.max_frame_bytes, 1024);
        assert!(c.namespaces["chat"].presence);
        assert_eq!(c.namespaces["chat"].history_size, 5);
        assert_eq!(
            c.auth.algorithms,
            vec![
                crate::auth::TokenAlgorithm::HS256,
                crate::auth::TokenAlgorithm::RS256
            ]
        );
        assert_eq!(c.default_namespace, "chat");
        assert_eq!(loaded.unknown_env, vec!["HOOKWIRE_NO_SUCH_THING"]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = load("", &[("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "lots")]).unwrap_err();
        assert!(
            err.to_string().contains("HOOKWIRE_LIMITS_MAX_FRAME_BYTES"),
            "{err}"
        );
        let err = load("", &[("HOOKWIRE_LIMITS_MAX_FRAME_BYTES", "1")]).unwrap_err();
        assert!(
            err.to_string().contains("limits.max_frame_bytes = 1"),
            "{err}"
        );
        let err = load("", &[("HOOKWIRE_WS_ADDR", "localhost")]).unwrap_err();
        assert!(
            err.to_string().contains("\"localhost\" is not an address"),
            "{err}"
        );
        let err = load("", &[("HOOKWIRE_AUTH_ALGORITHMS", "HS256,none")]).unwrap_err();
        assert!(
            err.to_string().contains("\"none\" is never accepted"),
            "{err}"
        );
        let err = load("[limits]\nmax_frame_byte = 5\n", &[]).unwrap_err();
        assert!(err.to_string().contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn an_override_changes_only_its_key_with_or_without_a_file() {
        let missing = Path::new("/nonexistent/hookwire.toml");
        let vars = EnvOverrides::from_pairs([("HOOKWIRE_NAMESPACES_CHAT_PLUGINS", "")]);
        let loaded = Config::load(missing, true, &vars).unwrap();
        assert_eq!(loaded.config, Config::default());
        let vars = EnvOverrides::from_pairs([("HOOKWIRE_NAMESPACES_CHAT_PRESENCE", "false")]);
        let c = Config::load(missing, true, &vars).unwrap().config;
        assert!(!c.namespaces["chat"].presence);
        assert_eq!(c.namespaces["chat"].history_size, 100);
        assert_eq!(c.namespaces.len(), 4);
        // A file without [namespaces] keeps the default ones under an override too.
        let c = load(
            "[limits]\nmax_frame_bytes = 1024\n",
            &[("HOOKWIRE_NAMESPACES_NEWS_PUBLIC", "false")],
        )
        .unwrap()
        .config;
        assert_eq!(c.limits.max_frame_bytes, 1024);
        assert!(!c.namespaces["news"].public);
        assert!(c.namespaces["chat"].join_leave);
        // A file's own [namespaces] still replaces the defaults.
        let c = load("[namespaces.only]\n", &[]).unwrap().config;
        assert_eq!(c.namespaces.keys().collect::<Vec<_>>(), ["only"]);
    }

    #[test]
    fn missing_default_file_uses_embedded_defaults() {
        let loaded = Config::load(
            Path::new("/nonexistent/hookwire.toml"),
            true,
            &EnvOverrides::default(),
        )
        .unwrap();
        assert!(loaded.path.is_none());
        assert_eq!(loaded.config, Config::default());
        assert!(
            Config::load(
                Path::new("/nonexistent/hookwire.toml"),
                false,
                &EnvOverrides::default()
            )
            .is_err()
        );
    }
}
