//! The `hookwire` binary: parses the CLI, loads config, sets up logs and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hookwire::auth::{self, SecretSource, TokenSpec, Verifier};
use hookwire::config::{self, Config, EnvOverrides, LogFormat};
use hookwire::node::ApiKeys;
use hookwire::plugins::scaffold;
use hookwire::server::{self, Server};

/// Exit code for a bad config or bad arguments (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "hookwire",
    version,
    about = "A programmable realtime broker",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Mint an HS256 client token with the configured secret (for trying things out).
    Token(TokenArgs),
    /// Load and validate the config, print a summary, and exit (64 when invalid).
    CheckConfig(ConfigArgs),
    /// Look at and test plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin project (source, build script, events.jsonl with the
    /// decisions it must get, README) that builds and passes `plugin test` as written.
    New {
        /// The plugin's name: a-z, 0-9 and dashes (e.g. no-shouting).
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: scaffold::Lang,
        /// Where to write it (default: ./NAME); must not exist, or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust: the plugin SDK's path as the project's Cargo.toml gives it (relative to
        /// the project). Default: the SDK of the source tree this binary was built from,
        /// when it is there; otherwise the crates.io version.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Show a plugin module's sha256, size, world, every import (and how the broker
    /// serves it) and every export; exit 1 when the broker would refuse to load it.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay recorded events (JSONL) through a plugin, or with --namespace through a
    /// namespace's whole configured chain, and print each decision as a JSON line; exit
    /// 1 when an event's `expect` is not met, 2 when it cannot run.
    Test {
        /// The plugin module (not with --namespace).
        #[arg(required_unless_present = "namespace")]
        file: Option<PathBuf>,
        /// The events, one JSON object per line: {"hook":"publish","channel":"chat:a",
        /// "data":{…},"user":"alice","claims":{…},"expect":"refuse"} (what
        /// /admin/plugins/capture records).
        #[arg(long)]
        events: PathBuf,
        /// With a FILE: the plugin's configuration (a JSON object), as
        /// `[plugins.modules.NAME.config]` would give it. With --namespace: the broker's
        /// config file (default config/hookwire.toml), whose plugins and chains run.
        #[arg(long)]
        config: Option<String>,
        /// Replay through this namespace's configured chain (and the connection chain
        /// for connect and disconnect events) instead of one plugin.
        #[arg(long, conflicts_with = "file")]
        namespace: Option<String>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Config file. Without it (and without HOOKWIRE_CONFIG), config/hookwire.toml, or the
    /// embedded defaults when that file does not exist.
    #[arg(long, env = config::ENV_CONFIG)]
    config: Option<PathBuf>,
    /// Allow the built-in development JWT secret when HOOKWIRE_JWT_SECRET is unset. Never in production.
    #[arg(long)]
    dev: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// Subscribe patterns, comma-separated (e.g. 'chat:*,news:*').
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Publish patterns, comma-separated; without it the token may publish where it may subscribe.
    #[arg(long, value_delimiter = ',')]
    publish: Option<Vec<String>>,
    /// The `info` claim, a JSON object shown in presence.
    #[arg(long)]
    info: Option<String>,
    /// Lifetime, e.g. 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Another claim, KEY=VALUE (VALUE is JSON when it parses, else a string), e.g.
    /// `--claim name=Alice --claim role=admin`; repeatable.
    #[arg(long = "claim", value_parser = parse_claim)]
    claims: Vec<(String, serde_json::Value)>,
}

fn parse_claim(s: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write a claim as KEY=VALUE, e.g. name=Alice"))?;
    if ["sub", "exp", "iat", "channels", "publish", "info"].contains(&key) {
        return Err(format!(
            "{key:?} has an option of its own (--{key}, or --ttl for exp/iat)"
        ));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.to_string(), value))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Plugin(command) => plugin(command),
    }
}

fn plugin(command: PluginCommand) -> ExitCode {
    use hookwire::plugins::replay;
    match command {
        PluginCommand::Inspect { file, json } => match replay::inspect(&file) {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("serializes")
                    );
                } else {
                    println!("file:    {}", report.file);
                    println!("sha256:  {}", report.sha256);
                    println!("size:    {} bytes", report.size);
                    println!(
                        "world:   {}",
                        report.world.unwrap_or(
                            "none (fits neither hookwire:plugin@0.2.0 nor the 0.1.0 world)"
                        )
                    );
                    if let (Some(name), Some(version)) = (&report.name, &report.version) {
                        println!("plugin:  {name} {version}");
                        println!("hooks:   {}", report.hooks.join(", "));
                    }
                    println!("imports:");
                    for i in &report.imports {
                        println!("  {:<44} {}", i.name, i.served);
                    }
                    println!("exports:");
                    for e in &report.exports {
                        println!("  {e}");
                    }
                    match &report.refused {
                        Some(why) => println!("load:    REFUSED: {why}"),
                        None => println!("load:    ok"),
                    }
                }
                if report.refused.is_some() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("hookwire: {}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk.or_else(scaffold::default_sdk);
            match scaffold::new_project(&name, lang, &dir, sdk.as_deref()) {
                Ok(files) => {
                    for f in &files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "next: cd {} && ./build && hookwire plugin test {name}.wasm --events events.jsonl --config '{{\"max_len\": 20}}'",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hookwire: {e}");
                    ExitCode::from(1)
                }
            }
        }
        PluginCommand::Test {
            file,
            events,
            config,
            namespace,
        } => {
            let mut out = std::io::stdout().lock();
            let ran = match (file, namespace) {
                (Some(file), _) => replay::test(&file, &events, config.as_deref(), &mut out),
                (None, Some(ns)) => {
                    let args = ConfigArgs {
                        config: config.map(PathBuf::from),
                        dev: false,
                    };
                    let loaded = match load(&args) {
                        Ok(loaded) => loaded,
                        Err(code) => return code,
                    };
                    replay::test_chain(&loaded.config, &ns, &events, &mut out)
                }
                (None, None) => unreachable!("clap requires FILE or --namespace"),
            };
            match ran {
                Ok(0) => ExitCode::SUCCESS,
                Ok(unmet) => {
                    eprintln!("hookwire: {unmet} expectation(s) not met");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("hookwire: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn config_path(args: &ConfigArgs) -> (PathBuf, bool) {
    match &args.config {
        Some(p) => (p.clone(), false),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), true),
    }
}

fn load(args: &ConfigArgs) -> Result<config::LoadedConfig, ExitCode> {
    let (path, is_default) = config_path(args);
    Config::load(&path, is_default, &EnvOverrides::from_process()).map_err(|e| {
        eprintln!("hookwire: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn secret(config: &Config, dev: bool) -> Result<Option<(Vec<u8>, SecretSource)>, ExitCode> {
    if !config.auth.accepts(hookwire::auth::TokenAlgorithm::HS256) {
        return Ok(None);
    }
    let env = std::env::var(config::ENV_JWT_SECRET).ok();
    auth::resolve_secret(env.as_deref(), dev)
        .map(Some)
        .map_err(|e| {
            eprintln!("hookwire: {e}");
            ExitCode::from(EXIT_CONFIG)
        })
}

fn serve(args: ServeArgs) -> ExitCode {
    let loaded = match load(&args.config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let config = loaded.config;
    let log = hookwire::logging::init(
        args.log_format.unwrap_or(config.log.format),
        &config.log.level,
    );
    match &loaded.path {
        Some(p) => tracing::info!(path = %p.display(), "Config loaded"),
        None => tracing::info!("No config file at the default path; using the embedded defaults"),
    }
    if !loaded.applied_env.is_empty() {
        tracing::info!(vars = ?loaded.applied_env, "Config overridden from the environment");
    }
    if !loaded.unknown_env.is_empty() {
        tracing::warn!(vars = ?loaded.unknown_env, "These HOOKWIRE_* variables match no setting and are ignored");
    }
    let secret = match secret(&config, args.config.dev) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some((_, SecretSource::DevDefault)) = &secret {
        tracing::warn!(
            "!!! DEVELOPMENT MODE: using the built-in JWT secret. Anyone can mint tokens for this broker. Set HOOKWIRE_JWT_SECRET and drop --dev before exposing it !!!"
        );
    }
    let verifier = match Verifier::new(&config.auth, secret.as_ref().map(|(s, _)| s.as_slice())) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "Invalid auth configuration");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookwire: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keys = ApiKeys {
        api: std::env::var(config::ENV_API_KEY)
            .ok()
            .filter(|k| !k.is_empty()),
        admin: std::env::var(config::ENV_ADMIN_KEY)
            .ok()
            .filter(|k| !k.is_empty()),
    };
    if keys.api.is_none() {
        tracing::info!("HOOKWIRE_API_KEY is not set: the server API (/api/*) answers 401");
    }
    let (config_path, path_is_default) = config_path(&args.config);
    let reload = server::Reload {
        config_path,
        path_is_default,
        log,
    };
    let result = runtime.block_on(async move {
        let options = server::Options {
            dev: args.config.dev,
            dev_token_secret: secret.filter(|_| args.config.dev).map(|(secret, _)| secret),
        };
        let server = Server::bind(config, verifier, keys, options).await?;
        tokio::spawn(server::watch_signals(server.node.clone(), reload));
        server.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Broker failed");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> ExitCode {
    // A bad config fails here too, so a token is never minted for a broker that cannot start.
    if let Err(code) = load(&args.config) {
        return code;
    }
    let secret = match auth::resolve_secret(
        std::env::var(config::ENV_JWT_SECRET).ok().as_deref(),
        args.config.dev,
    ) {
        Ok((s, source)) => {
            if source == SecretSource::DevDefault {
                eprintln!(
                    "hookwire: warning: signing with the built-in development secret (--dev)"
                );
            }
            s
        }
        Err(e) => {
            eprintln!("hookwire: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut spec = TokenSpec::new(args.sub, args.ttl).channels(args.channels);
    spec.publish = args.publish;
    spec.extra = args.claims.into_iter().collect();
    if let Some(info) = args.info {
        match serde_json::from_str::<serde_json::Value>(&info) {
            Ok(v @ serde_json::Value::Object(_)) => spec.info = Some(v),
            _ => {
                eprintln!("hookwire: --info must be a JSON object, e.g. '{{\"name\":\"Alice\"}}'");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    println!("{}", spec.sign_hs256(&secret));
    ExitCode::SUCCESS
}

fn check_config(args: ConfigArgs) -> ExitCode {
    let loaded = match load(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let c = &loaded.config;
    if let Err(code) = secret(c, args.dev) {
        return code;
    }
    if let Err(e) = Verifier::new(&c.auth, Some(auth::DEV_SECRET.as_bytes())) {
        eprintln!("hookwire: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let source = loaded.path.as_ref().map_or_else(
        || "embedded defaults".to_string(),
        |p| p.display().to_string(),
    );
    println!("config OK ({source})");
    println!("  ws_addr     {}", c.ws_addr);
    println!("  admin_addr  {}", c.admin_addr);
    let algorithms: Vec<&str> = c.auth.algorithms.iter().map(|a| a.as_str()).collect();
    println!("  algorithms  {}", algorithms.join(", "));
    for (name, ns) in &c.namespaces {
        println!(
            "  namespace {name:<8} history {}/{}s presence={} join_leave={} client_publish={} personal={} public={}",
            ns.history_size,
            ns.history_ttl_secs,
            ns.presence,
            ns.join_leave,
            ns.allow_publish,
            ns.personal,
            ns.public
        );
    }
    for var in &loaded.unknown_env {
        println!("  warning: {var} matches no setting");
    }
    ExitCode::SUCCESS
}
