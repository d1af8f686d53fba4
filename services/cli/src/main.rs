//! `sysmonstm`, the command line: thin entry point; the commands live in
//! the library so the process tests and the code agree.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = sysmonstm_cli::Cli::parse();
    // A command's own output is what matters; the client's connection
    // events (reconnecting while the hub is away) only with RUST_LOG.
    let _telemetry = sysmonstm_kit::telemetry::init_with("sysmonstm", "warn");
    match sysmonstm_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sysmonstm: {e:#}");
            let code = if e.downcast_ref::<sysmonstm_cli::InvalidInput>().is_some() {
                sysmonstm_kit::config::EXIT_CONFIG as u8
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}
