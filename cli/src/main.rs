//! `reactive-lock`: the command line of reactive-lock.
//!
//! * `reactive-lock hub --listen 127.0.0.1:50051` runs the gRPC hub that instances using
//!   `GrpcBackend` (or the .NET ReactiveLockGrpc client) share state through;
//! * `watch`, `inspect`, `wait` read keys (and write nothing); `hold` holds one busy.
//!
//! Exit codes: 0 success (for `inspect`: every key unblocked); 1 `inspect`: a key blocked,
//! `wait`: the timeout passed; 2 an error (a bad argument, an unreachable backend) or, for
//! `inspect`, a key unknown. Errors are one line on stderr.

mod bench;
mod keys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keys::{BackendArgs, Output};
use reactive_lock_backends::grpc::server::{Hub, HubLimits, HubTls};

#[derive(Parser)]
#[command(
    name = "reactive-lock",
    version,
    about = "reactive-lock: distributed busy/idle state, reactively"
)]
struct Cli {
    /// Log lines as text or as one JSON object per line (stderr; RUST_LOG filters them).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print every key's state, then every change (status, busy instances with lock data
    /// and valid-until), until SIGINT or SIGTERM. Backend loss shows as `unknown`.
    Watch {
        #[command(flatten)]
        backend: BackendArgs,
        /// One JSON object per line: {"at","key","status","instances":[{"instance","busy",
        /// "lock_data","valid_until"}]}.
        #[arg(long)]
        json: bool,
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Read every key once (through to the store) and print it. Exit code: 0 all
    /// unblocked, 1 one blocked, 2 one unknown or the backend unreachable.
    Inspect {
        #[command(flatten)]
        backend: BackendArgs,
        /// One JSON object per line (as `watch --json`).
        #[arg(long)]
        json: bool,
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Return when every key is unblocked everywhere (exit 0), or when the timeout passes
    /// (exit 1). For example, a deploy step that waits until no batch is in flight.
    Wait {
        #[command(flatten)]
        backend: BackendArgs,
        /// How long to wait at most (`30s`, `5m`, `1h 30m`); default: as long as it takes.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Load in one process: --instances registries on the backend, --tasks tasks each
    /// entering and leaving --keys keys, for --duration; then transitions/s and the
    /// acknowledged-transition and propagation latency percentiles (a progress bar meanwhile).
    Bench {
        #[command(flatten)]
        backend: BackendArgs,
        /// Instances (registries, each with its own connection); at least 2.
        #[arg(long, default_value_t = 4)]
        instances: usize,
        /// Tasks per instance.
        #[arg(long, default_value_t = 8)]
        tasks: usize,
        /// Keys the tasks share.
        #[arg(long, default_value_t = 16)]
        keys: usize,
        /// How long to run (`10s`, `1m`).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        /// The figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hold KEY busy (renewed) until --for passes or SIGINT/SIGTERM, then publish idle.
    /// Killed with SIGKILL, its entry expires at the others.
    Hold {
        #[command(flatten)]
        backend: BackendArgs,
        /// Lock data to publish with the busy status.
        #[arg(long)]
        data: Option<String>,
        /// This instance's name in the store (default: host-pid-random).
        #[arg(long)]
        instance: Option<String>,
        /// How long to hold (`10s`, `2m`); default: until a signal.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// How often the busy status is re-published (shorter than --expiration).
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        renewal: Duration,
        /// How long each published busy status stays valid: after a SIGKILL, the others
        /// see the key blocked this long past the last renewal at most.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        expiration: Duration,
        /// The key.
        key: String,
    },
    /// Run the gRPC hub (wire-compatible with the .NET ReactiveLockGrpc service).
    ///
    /// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more. Stops cleanly on
    /// SIGINT or SIGTERM: open subscriptions end with UNAVAILABLE (clients move to another
    /// hub), calls in flight finish, then the process exits.
    Hub {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// PEM certificate chain for TLS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for TLS (with --tls-cert).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require `authorization: Bearer <TOKEN>` on every call.
        #[arg(long, env = "REACTIVE_LOCK_HUB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Largest accepted message, bytes.
        #[arg(long, default_value_t = HubLimits::default().max_message_size)]
        max_message_size: usize,
        /// Keys the hub holds at most.
        #[arg(long, default_value_t = HubLimits::default().max_keys)]
        max_keys: usize,
        /// Instances per key at most.
        #[arg(long, default_value_t = HubLimits::default().max_instances_per_key)]
        max_instances_per_key: usize,
        /// Longest lock data, bytes.
        #[arg(long, default_value_t = HubLimits::default().max_lock_data_len)]
        max_lock_data_len: usize,
        /// Notifications buffered per subscriber before a stalled one is dropped.
        #[arg(long, default_value_t = HubLimits::default().subscriber_buffer)]
        subscriber_buffer: usize,
        /// Largest encoded state of one key (all its instances), bytes: a status that would
        /// exceed it is refused.
        #[arg(long, default_value_t = HubLimits::default().max_notification_size)]
        max_notification_size: usize,
        /// Milliseconds a subscription may take to send its first message.
        #[arg(long, default_value_t = millis(HubLimits::default().first_message_timeout))]
        first_message_timeout_ms: u64,
        /// Milliseconds between HTTP/2 keep-alive pings to each client.
        #[arg(long, default_value_t = millis(HubLimits::default().keep_alive_interval))]
        keep_alive_interval_ms: u64,
        /// Milliseconds a keep-alive ping may go unanswered before the connection is closed.
        #[arg(long, default_value_t = millis(HubLimits::default().keep_alive_timeout))]
        keep_alive_timeout_ms: u64,
        /// Serve Prometheus metrics over HTTP on this address (GET /metrics): keys,
        /// subscribers, statuses received, rejections by limit, entries expired.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Milliseconds after which a key with no subscriber and no valid entry is forgotten,
        /// so --max-keys bounds the keys in use.
        #[arg(long, default_value_t = millis(HubLimits::default().forget_idle_keys_after))]
        forget_idle_keys_after_ms: u64,
        /// Longest validity the hub stores, on its clock (`30s`, `5m`): a later validUntil
        /// (a client clock ahead, a hostile peer) is capped, so no status wedges a key
        /// longer. Keep it above the clients' renewal period.
        #[arg(long, value_parser = parse_duration, default_value = "5m")]
        max_validity: Duration,
        /// Milliseconds after a status arrives during which an earlier-dated status of the
        /// same instance is dropped as an older message still in transit; later it
        /// replaces it (a client clock stepped back).
        #[arg(long, default_value_t = millis(HubLimits::default().reorder_window))]
        reorder_window_ms: u64,
        /// Concurrent HTTP/2 streams per client connection.
        #[arg(long, default_value_t = HubLimits::default().max_streams_per_connection)]
        max_streams_per_connection: u32,
        /// Milliseconds a subscriber may leave a notification unread before it is dropped
        /// as stalled.
        #[arg(long, default_value_t = millis(HubLimits::default().stall_timeout))]
        stall_timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reactive-lock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reactive-lock: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--help` and `--version` print as clap prints them; a usage error is one line on stderr
/// (exit 2), as every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        _ => {}
    }
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    eprintln!(
        "reactive-lock: {}",
        message.strip_prefix("error: ").unwrap_or(&message)
    );
    ExitCode::from(2)
}

/// A duration as people write it: `30s`, `5m`, `1h 30m`, `250ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration ({e})"))
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Watch {
            backend,
            json,
            keys,
        } => Ok(keys::watch(backend.connect().await?, keys, Output { json }).await?),
        Command::Inspect {
            backend,
            json,
            keys,
        } => Ok(keys::inspect(backend.connect().await?, keys, Output { json }).await?),
        Command::Wait {
            backend,
            timeout,
            keys,
        } => Ok(keys::wait(backend.connect().await?, keys, timeout).await?),
        Command::Bench {
            backend,
            instances,
            tasks,
            keys,
            duration,
            json,
        } => {
            let mut backends = Vec::with_capacity(instances);
            for _ in 0..instances {
                backends.push(backend.connect().await?);
            }
            let args = bench::BenchArgs {
                instances,
                tasks,
                keys,
                duration,
                json,
            };
            Ok(bench::bench(backends, args).await?)
        }
        Command::Hold {
            backend,
            data,
            instance,
            duration,
            renewal,
            expiration,
            key,
        } => {
            let hold = keys::Hold {
                key,
                data,
                instance,
                duration,
                renewal,
                expiration,
            };
            Ok(keys::hold(backend.connect().await?, hold).await?)
        }
        Command::Hub {
            listen,
            tls_cert,
            tls_key,
            token,
            max_message_size,
            max_keys,
            max_instances_per_key,
            max_lock_data_len,
            subscriber_buffer,
            max_notification_size,
            first_message_timeout_ms,
            keep_alive_interval_ms,
            keep_alive_timeout_ms,
            forget_idle_keys_after_ms,
            metrics_listen,
            max_validity,
            reorder_window_ms,
            max_streams_per_connection,
            stall_timeout_ms,
        } => {
            if let Some(addr) = metrics_listen {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .with_http_listener(addr)
                    .install()
                    .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
            }
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(HubTls::from_pem(
                    std::fs::read(&cert)
                        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?,
                    std::fs::read(&key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?,
                )),
                _ => None,
            };
            let mut limits = HubLimits::default();
            limits.max_message_size = max_message_size;
            limits.max_keys = max_keys;
            limits.max_instances_per_key = max_instances_per_key;
            limits.max_lock_data_len = max_lock_data_len;
            limits.subscriber_buffer = subscriber_buffer;
            limits.max_notification_size = max_notification_size;
            limits.first_message_timeout = Duration::from_millis(first_message_timeout_ms);
            limits.keep_alive_interval = Duration::from_millis(keep_alive_interval_ms);
            limits.keep_alive_timeout = Duration::from_millis(keep_alive_timeout_ms);
            limits.forget_idle_keys_after = Duration::from_millis(forget_idle_keys_after_ms);
            limits.max_validity = max_validity;
            limits.reorder_window = Duration::from_millis(reorder_window_ms);
            limits.max_streams_per_connection = max_streams_per_connection;
            limits.stall_timeout = Duration::from_millis(stall_timeout_ms);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            // Handlers go in before the hub says it listens: a SIGTERM sent right after
            // that line must stop it cleanly, not kill it.
            let shutdown = shutdown_signal()?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            // The first stdout line says where the hub listens (port 0 picks a free port).
            println!("listening on {scheme}://{}", listener.local_addr()?);
            tracing::info!(%listen, tls = tls.is_some(), token = token.is_some(), "reactive-lock hub started");
            Hub::new(limits)
                .serve_listener(listener, tls, token, shutdown)
                .await?;
            tracing::info!("reactive-lock hub stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Registers SIGINT and SIGTERM at once; the returned future resolves on the first.
#[cfg(unix)]
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let register = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"))
    };
    let mut int = register(SignalKind::interrupt(), "SIGINT")?;
    let mut term = register(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    })
}

/// Ctrl-C where there are no Unix signals.
#[cfg(not(unix))]
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: shutting down");
    })
}
