//! `reactive-lock`: the command line of reactive-lock.
//!
//! `reactive-lock hub --listen 127.0.0.1:50051` runs the gRPC hub that instances using
//! `GrpcBackend` (or the .NET ReactiveLockGrpc client) share state through.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reactive_lock_backends::grpc::server::{Hub, HubLimits, HubTls};

#[derive(Parser)]
#[command(
    name = "reactive-lock",
    version,
    about = "reactive-lock: distributed busy/idle state, reactively"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reactive-lock: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
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
        } => {
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
            Ok(())
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Registers SIGINT and SIGTERM at once; the returned future resolves on the first.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
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
