//! `load`: the Rinha de Backend 2025 load test against running service instances and
//! processors (see `reactive_lock_demo::load`). Prints one JSON object of results on stdout.
//!
//! Exit codes: 0 for a clean run (no failed payment, every summary answered and consistent,
//! nothing missing at the end), 1 when the results show any of those, 2 when the run could
//! not be set up (one line on stderr).

use std::time::Duration;

use clap::Parser;
use reactive_lock_demo::load::{LoadConfig, run};

/// The Rinha de Backend 2025 load test.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A service instance's base URL; repeat for each instance (users are spread over them).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The default processor's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    processor_default: String,
    /// The fallback processor's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8002")]
    processor_fallback: String,
    /// The processors' admin token.
    #[arg(long, default_value = "123")]
    token: String,
    /// Virtual users at the end of the ramp.
    #[arg(long, default_value_t = 550)]
    max_requests: usize,
    /// Length of the run in seconds (the processors' stages scale with it).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds between consistency checks.
    #[arg(long, default_value_t = 10)]
    check_every: u64,
    /// Timeout of one GET /payments-summary, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    summary_timeout_ms: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.max_requests == 0 || args.duration == 0 || args.check_every == 0 {
        eprintln!("load: --max-requests, --duration and --check-every must be at least 1");
        std::process::exit(2);
    }
    let config = LoadConfig {
        targets: args
            .targets
            .iter()
            .map(|t| t.trim_end_matches('/').to_owned())
            .collect(),
        processor_default: args.processor_default.trim_end_matches('/').to_owned(),
        processor_fallback: args.processor_fallback.trim_end_matches('/').to_owned(),
        token: args.token,
        max_vus: args.max_requests,
        duration: Duration::from_secs(args.duration),
        check_every: Duration::from_secs(args.check_every),
        summary_timeout: Duration::from_millis(args.summary_timeout_ms),
        progress: !args.no_progress,
    };
    for url in config
        .targets
        .iter()
        .chain([&config.processor_default, &config.processor_fallback])
    {
        if url
            .parse::<http::Uri>()
            .map_or(true, |u| u.scheme_str() != Some("http"))
        {
            eprintln!("load: URL must be http://host:port, got {url:?}");
            std::process::exit(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report always serializes")
            );
            std::process::exit(if report.is_clean() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    }
}
