//! `payments`: one instance of the payments service (see `reactive_lock_demo::service`).
//! Prints `listening on http://ADDR` once ready.
//!
//! Exit codes: 0 on SIGTERM/SIGINT (after persisting its buffer and leaving the lock idle),
//! 2 when it cannot start (one line on stderr).

use std::time::Duration;

use clap::{Parser, ValueEnum};
use reactive_lock_demo::service::{Config, LockBackend, Service};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// In-process lock and store: one instance only.
    Local,
    /// Lock and payment store in Redis (--redis-url).
    Redis,
    /// Lock through `reactive-lock hub` (--grpc-url), payment store in Redis (--redis-url).
    Grpc,
}

/// The Rinha de Backend 2025 payments API, several instances agreeing through reactive-lock.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: std::net::SocketAddr,
    /// This instance's name, unique among the instances.
    #[arg(long)]
    instance: String,
    /// Where the instances agree.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Redis URL: the lock (backend redis) and the payment store (redis and grpc).
    #[arg(long)]
    redis_url: Option<String>,
    /// Hub URL (backend grpc); repeat for replicated hubs.
    #[arg(long)]
    grpc_url: Vec<String>,
    /// The default payment processor's base URL.
    #[arg(long, env = "PAYMENT_PROCESSOR_URL_DEFAULT")]
    processor_default: String,
    /// The fallback payment processor's base URL.
    #[arg(long, env = "PAYMENT_PROCESSOR_URL_FALLBACK")]
    processor_fallback: String,
    /// Workers forwarding payments to the processors.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Longest a summary waits for payments in flight before answering 503, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    summary_wait_ms: u64,
    /// Runtime worker threads (the demo's instances share one CPU: one thread each avoids
    /// hand-offs between threads that cannot run at the same time anyway).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Answer summaries without waiting for payments in flight (the control run).
    #[arg(long)]
    no_lock: bool,
}

fn config(args: &Args) -> Result<Config, String> {
    let redis = |what: &str| {
        args.redis_url
            .clone()
            .ok_or_else(|| format!("--backend {what} needs --redis-url"))
    };
    let backend = match args.backend {
        Backend::Local => LockBackend::Local,
        Backend::Redis => LockBackend::Redis(redis("redis")?),
        Backend::Grpc => {
            if args.grpc_url.is_empty() {
                return Err("--backend grpc needs --grpc-url".into());
            }
            LockBackend::Grpc {
                hubs: args.grpc_url.clone(),
                store_url: redis("grpc")?,
            }
        }
    };
    if args.instance.is_empty() || args.instance.contains([';', ',']) {
        return Err(format!(
            "--instance must be non-empty without ';' or ',', got {:?}",
            args.instance
        ));
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    for url in [&args.processor_default, &args.processor_fallback] {
        if url
            .parse::<http::Uri>()
            .map_or(true, |u| u.scheme_str() != Some("http"))
        {
            return Err(format!(
                "processor URL must be http://host:port, got {url:?}"
            ));
        }
    }
    Ok(Config {
        instance: args.instance.clone(),
        backend,
        processor_default: args.processor_default.clone(),
        processor_fallback: args.processor_fallback.clone(),
        workers: args.workers,
        summary_wait: Duration::from_millis(args.summary_wait_ms.max(1)),
        no_lock: args.no_lock,
    })
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("payments: {e}");
            std::process::exit(2);
        }
    };
    // Two workers: the instances of the demo share one CPU; more threads only add hand-offs.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("payments: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = runtime.block_on(run(args.listen, config)) {
        eprintln!("payments: {e}");
        std::process::exit(2);
    }
}

async fn run(listen: std::net::SocketAddr, config: Config) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let service = Service::start(config).await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    axum::serve(listener, service.router())
        .with_graceful_shutdown(reactive_lock_demo::service::shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    service.shutdown().await;
    Ok(())
}
