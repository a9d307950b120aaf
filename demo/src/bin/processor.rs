//! `processor`: the Rinha de Backend 2025 payment processor (see
//! `reactive_lock_demo::processor`). Prints `listening on http://ADDR` once ready.
//!
//! Exit codes: 0 on SIGTERM/SIGINT, 2 when it cannot start (one line on stderr).

use clap::Parser;

/// The Rinha de Backend 2025 payment processor.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: std::net::SocketAddr,
    /// Fee per payment, as a rate (0.05 = 5 %).
    #[arg(long, default_value_t = 0.05)]
    fee: f64,
}

fn main() {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.fee) {
        eprintln!(
            "processor: --fee must be a rate in [0, 1), got {}",
            args.fee
        );
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("processor: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("processor: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let processor = reactive_lock_demo::processor::Processor::new(args.fee);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    axum::serve(listener, processor.router())
        .with_graceful_shutdown(reactive_lock_demo::service::shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))
}
