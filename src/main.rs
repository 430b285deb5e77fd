//! The `ferry` command: parses arguments, sets up logging, loads the configuration, and hands
//! over to [`ferry::app::run`]. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ferry::config::{self, Config};
use ferry::telemetry::{self, LogFormat};

/// ferry replicates every object version from a source S3 bucket to one or several targets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the stages enabled in [stages].
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "config/ferry.toml", env = "FERRY_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and print what ferry understood; exit status 2 if invalid.
    CheckConfig {
        #[arg(long, short, default_value = "config/ferry.toml", env = "FERRY_CONFIG")]
        config: PathBuf,
    },
}

/// Exit status for an invalid configuration (distinct from a runtime failure).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(c) => {
                print!("{}", config::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            telemetry::init(cli.log_format);
            let config = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "invalid configuration");
                    eprintln!("ferry: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run(config)
        }
    }
}

fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match ferry::app::run(config, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "ferry stopped on an error");
                ExitCode::FAILURE
            }
        }
    })
}

/// First SIGTERM/SIGINT: orderly shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        received += 1;
        if received == 1 {
            tracing::info!("signal received: shutting down (send again to exit at once)");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}
