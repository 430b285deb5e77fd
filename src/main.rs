//! The `ferry` command: parses arguments, sets up logging, loads the configuration, and hands
//! over to [`ferry::app::run`]. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ferry::client::{commands, AdminClient, ClientError};
use ferry::config::{self, Config};
use ferry::stages;
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
    /// Enqueue every existing version of a rule's source once (resumable).
    Backfill {
        /// The rule whose source is listed.
        #[arg(long)]
        rule: String,
        /// Start from the beginning even if an earlier backfill of the rule completed or
        /// was interrupted.
        #[arg(long)]
        restart: bool,
        #[arg(long, short, default_value = "config/ferry.toml", env = "FERRY_CONFIG")]
        config: PathBuf,
    },
    /// Readiness and targets of a running ferry, or the replication status of one object.
    Status {
        /// `BUCKET/KEY` of the object; absent: the overview.
        object: Option<String>,
        /// Only this version of the object.
        #[arg(long)]
        version_id: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Entries that failed for a target: list them, or send them back for retry.
    Failed {
        #[command(subcommand)]
        command: FailedCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Messages no stage could read: list them, or replay them onto the topics they came from.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Targets: list their state, pause or resume one.
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach a running ferry's admin server.
#[derive(clap::Args)]
struct AdminArgs {
    /// Its URL.
    #[arg(
        long,
        global = true,
        env = "FERRY_ADMIN",
        default_value = "http://127.0.0.1:9410"
    )]
    admin: String,
    /// Its `admin.token` (needed for the commands that change something).
    #[arg(long, global = true, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum FailedCommand {
    /// List failed entries, a page at a time.
    List {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The id after which the page starts (printed at the end of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Send failed entries back for another round of attempts.
    Retry {
        /// Every failed entry.
        #[arg(long, conflicts_with_all = ["target", "prefix", "ids"])]
        all: bool,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        /// Ids from `ferry failed list --json`.
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List dead letters, oldest first, a page at a time.
    List {
        /// The offset the page starts at (printed at the end of the previous page).
        #[arg(long, default_value_t = 0)]
        from: i64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish dead letters again to the topics they came from (once the cause is fixed).
    Replay {
        /// Every dead letter.
        #[arg(long, conflicts_with = "offsets")]
        all: bool,
        /// Offsets from `ferry dead-letter list`.
        offsets: Vec<i64>,
    },
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// Each target's state, backlog and failures.
    List,
    /// Stop copying to a target (on every instance) until resumed.
    Pause {
        name: String,
        /// Resume by itself after this long, e.g. 30m or 2h.
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why, for whoever looks at `targets list`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Copy to a paused target again, now or after a while.
    Resume {
        name: String,
        /// Resume after this long instead of now.
        #[arg(long)]
        after: Option<String>,
    },
}

/// Exit status for an invalid configuration (distinct from a runtime failure).
const EXIT_CONFIG: u8 = 2;

/// Part buffers (5 MiB and more) must go back to the system when freed. glibc raises its mmap
/// threshold each time a large block is freed, after which such buffers come from per-thread
/// arenas and stay resident: eight 256 MiB copies at once peaked at 570 MiB RSS that way, and
/// at 258 MiB with the threshold fixed at 1 MiB (`bash scripts/bench.sh --only large`). It is
/// fixed at 4 MiB: parts are still mapped and unmapped, while 1 MiB objects' buffers reuse
/// arena memory instead of faulting in fresh pages for every object.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() -> ExitCode {
    fixed_mmap_threshold();
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
        Command::Status {
            object,
            version_id,
            admin,
        } => client(admin, |c, json| {
            Box::pin(async move {
                commands::status(c, json, object.as_deref(), version_id.as_deref()).await
            })
        }),
        Command::Failed { command, admin } => failed(command, admin),
        Command::DeadLetter { command, admin } => dead_letter(command, admin),
        Command::Targets { command, admin } => targets(command, admin),
        Command::Backfill {
            rule,
            restart,
            config,
        } => {
            telemetry::init(cli.log_format);
            match config::load(&config) {
                Ok(c) => backfill(c, &rule, restart),
                Err(e) => {
                    eprintln!("ferry: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
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

/// `ferry failed list|retry`.
fn failed(command: FailedCommand, admin: AdminArgs) -> ExitCode {
    client(admin, |c, json| {
        Box::pin(async move {
            match command {
                FailedCommand::List {
                    target,
                    prefix,
                    limit,
                    after,
                } => {
                    commands::failed_list(
                        c,
                        json,
                        target.as_deref(),
                        prefix.as_deref(),
                        limit,
                        after.as_deref(),
                    )
                    .await
                }
                FailedCommand::Retry {
                    all,
                    target,
                    prefix,
                    ids,
                } => {
                    commands::failed_retry(c, json, all, target.as_deref(), prefix.as_deref(), &ids)
                        .await
                }
            }
        })
    })
}

/// `ferry dead-letter list|replay`.
fn dead_letter(command: DeadLetterCommand, admin: AdminArgs) -> ExitCode {
    client(admin, |c, json| {
        Box::pin(async move {
            match command {
                DeadLetterCommand::List { from, limit } => {
                    commands::dead_letters(c, json, from, limit).await
                }
                DeadLetterCommand::Replay { all, offsets } => {
                    commands::replay_dead_letters(c, json, all, &offsets).await
                }
            }
        })
    })
}

/// `ferry targets list|pause|resume`.
fn targets(command: TargetsCommand, admin: AdminArgs) -> ExitCode {
    client(admin, |c, json| {
        Box::pin(async move {
            match command {
                TargetsCommand::List => commands::targets_list(c, json).await,
                TargetsCommand::Pause {
                    name,
                    duration,
                    reason,
                } => commands::pause(c, json, &name, duration.as_deref(), reason.as_deref()).await,
                TargetsCommand::Resume { name, after } => {
                    commands::resume(c, json, &name, after.as_deref()).await
                }
            }
        })
    })
}

/// What an admin command produces: the text to print, or why it failed.
type Asked<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, ClientError>> + 'a>>;

/// Builds the async runtime, or says why it could not.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("ferry: cannot start the async runtime: {e}"))
        .ok()
}

/// Runs one admin-API command and prints its answer; exit status 1 if it failed.
fn client(
    args: AdminArgs,
    ask: impl for<'a> FnOnce(&'a AdminClient, bool) -> Asked<'a>,
) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let outcome = runtime.block_on(async {
        let client = AdminClient::new(&args.admin, args.token)?;
        ask(&client, args.json).await
    });
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ferry backfill`: a progress line on a terminal, a summary at the end.
fn backfill(config: Config, rule: &str, restart: bool) -> ExitCode {
    use std::io::{IsTerminal, Write};
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let terminal = std::io::stderr().is_terminal();
    let mut shown = std::time::Instant::now();
    let progress = |handled: u64| {
        if terminal && shown.elapsed().as_millis() >= 100 {
            shown = std::time::Instant::now();
            eprint!("\rbackfill {rule}: {handled} versions listed");
            let _ = std::io::stderr().flush();
        }
    };
    let outcome = runtime.block_on(stages::populator::backfill::backfill(
        &config, rule, restart, progress,
    ));
    if terminal {
        eprintln!();
    }
    match outcome {
        Ok(done) => {
            println!(
                "backfill of rule {rule}: {} versions enqueued, {} skipped (enqueued by an earlier run)",
                done.enqueued, done.skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: backfill of rule {rule}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
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
