//! Builds the stages from a validated [`Config`], runs them under one task tracker, and tears
//! them down in order: on shutdown (or when any stage fails) every stage is cancelled, in-flight
//! work gets `shutdown_timeout` to finish and be acknowledged, then offsets are committed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin, Views};
use crate::bus::{self, Bus, BusError, Publisher, Topics};
use crate::config::{Config, Feed};
use crate::control::gate::Gates;
use crate::control::Pauses;
use crate::stages::board::Board;
use crate::stages::gc::{GarbageCollector, Policy};
use crate::stages::populator::events::EventFeed;
use crate::stages::populator::ingest::{self, Ingest};
use crate::stages::populator::scan::Scanner;
use crate::stages::replication::{Holds, ReplicationProcessor, Subscriptions};
use crate::stages::status::StatusProcessor;
use crate::stages::StageError;
use crate::storage::{Store, Stores};

/// How often the locations are swept of what crashed processes left behind (stale temporary
/// files, abandoned multipart uploads): their age limits are a day and a week.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long the admin server may take to finish its requests once the stages have stopped.
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why ferry stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot start: {0}")]
    Start(#[from] BusError),
    #[error("cannot start: {0}")]
    Listen(String),
    #[error("stage failed: {0}")]
    Stage(Box<StageError>),
    #[error("stage {0} stopped unexpectedly")]
    StageExited(&'static str),
    #[error("stage {0} crashed (a bug; please report it with the log): {1}")]
    StagePanicked(&'static str, String),
}

/// The sockets ferry serves on, bound before anything runs so that a taken port stops ferry
/// at once with a clear error (and so that a caller can bind them itself, e.g. to port 0).
pub struct Listeners {
    pub admin: TcpListener,
    pub ingest: Option<TcpListener>,
}

impl Listeners {
    /// Binds the admin server's address and, if configured, the ingest endpoint's.
    pub async fn bind(config: &Config) -> Result<Self, AppError> {
        let admin = admin::bind(&config.admin).await.map_err(AppError::Listen)?;
        let ingest = match &config.ingest {
            Some(ingest) => Some(ingest::bind(ingest).await.map_err(AppError::Listen)?),
            None => None,
        };
        Ok(Self { admin, ingest })
    }
}

/// Runs every configured stage until `shutdown` is cancelled or a stage fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let listeners = Listeners::bind(&config).await?;
    run_on(config, listeners, shutdown).await
}

/// [`run`] on listeners the caller bound.
pub async fn run_on(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let config = Arc::new(config);
    let topics = Topics::new(&config.queue.topic_prefix);
    let bus = Bus::connect(&config.queue)?;
    prepare_topics(&config, &bus, &topics).await?;
    let stores = open_stores(&config).await?;
    let (supervisor, mut failed) = Supervisor::new(&shutdown);
    let parts = Parts {
        publisher: bus.publisher(),
        // Pauses asked before this start hold from the first entry on.
        pauses: Pauses::default(),
        gates: Arc::new(Gates::new(config.locations.keys().cloned())),
        config,
        bus,
        topics,
        stores,
    };
    parts
        .pauses
        .reload(&parts.bus.state_reader()?, &parts.topics)
        .await?;
    supervisor.track(parts.pauses.clone().follow(
        parts.bus.clone(),
        parts.topics.clone(),
        supervisor.token.clone(),
    ));
    supervisor.track(
        parts
            .stores
            .clone()
            .sweep_every(SWEEP_INTERVAL, supervisor.token.clone()),
    );
    start_stages(&parts, &supervisor, listeners.ingest)?;
    // Not a stage: it answers until the stages have stopped, so readiness reports them
    // stopping; then it finishes the requests it has (a few seconds at most) and ends.
    let admin_stop = CancellationToken::new();
    let admin_server = tokio::spawn(admin::serve(
        listeners.admin,
        admin_state(&parts, &supervisor)?,
        admin_stop.clone(),
    ));
    supervisor.tracker.close();
    let outcome = supervisor
        .wait(&mut failed, &shutdown, parts.config.shutdown_timeout)
        .await;
    admin_stop.cancel();
    let abort = admin_server.abort_handle();
    if tokio::time::timeout(ADMIN_DRAIN, admin_server)
        .await
        .is_err()
    {
        abort.abort();
    }
    outcome
}

/// Creates the topics that do not exist (and the events topic, if the events feed reads one
/// nobody made yet).
async fn prepare_topics(config: &Config, bus: &Bus, topics: &Topics) -> Result<(), AppError> {
    let mut specs = bus::topic_specs(&config.queue, topics);
    if config.stages.populator && config.populator.feeds.contains(&Feed::Events) {
        // An events topic made by someone else may have any partition count: don't insist.
        let exists = bus
            .partition_count(&config.populator.events_topic)
            .await
            .unwrap_or(0)
            > 0;
        if !exists {
            specs.push(bus::TopicSpec {
                name: config.populator.events_topic.clone(),
                partitions: config.queue.partitions,
                compacted: false,
            });
        }
    }
    bus.ensure_topics(&specs, config.queue.replication_factor)
        .await?;
    tracing::info!(queue = %Bus::describe(&config.queue), topics = specs.len(), "topics ready");
    Ok(())
}

/// Connects every location, claims those two processes must not share, and checks them all.
async fn open_stores(config: &Config) -> Result<Stores, AppError> {
    let stores = Stores::connect(config).await;
    for store in stores.iter() {
        store
            .claim()
            .await
            .map_err(|e| AppError::Listen(e.to_string()))?;
    }
    // All at once (each is a round trip). Not fatal: a target may be down for a while; its
    // copies wait and retry.
    let checks = futures_util::future::join_all(stores.iter().map(|s| s.check())).await;
    for (store, check) in stores.iter().zip(checks) {
        match check {
            Ok(()) => {
                tracing::info!(location = %store.name(), bucket = %store.bucket(), "location reachable")
            }
            Err(e) => {
                tracing::error!(location = %store.name(), error = %e, "location check failed; copies involving it will retry")
            }
        }
    }
    Ok(stores)
}

/// What the stages are built from.
struct Parts {
    config: Arc<Config>,
    bus: Bus,
    topics: Topics,
    stores: Stores,
    publisher: Publisher,
    pauses: Pauses,
    gates: Arc<Gates>,
}

type StageFuture = Pin<Box<dyn Future<Output = Result<(), StageError>> + Send>>;

/// The running stages: each in a task of its own under one tracker, its end reported.
struct Supervisor {
    tracker: TaskTracker,
    /// Cancelled to stop the stages (a child of the process's shutdown).
    token: CancellationToken,
    /// The stages started, their state and counters (read by the admin server).
    board: Arc<Board>,
    failed: mpsc::Sender<AppError>,
}

impl Supervisor {
    fn new(shutdown: &CancellationToken) -> (Self, mpsc::Receiver<AppError>) {
        let (failed, failures) = mpsc::channel(8);
        let supervisor = Self {
            tracker: TaskTracker::new(),
            token: shutdown.child_token(),
            board: Arc::default(),
            failed,
        };
        (supervisor, failures)
    }

    /// Runs a helper task (not a stage) until the stages stop.
    fn track(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Runs stage `name`; its failure, panic or unexpected end stops ferry.
    fn spawn(&self, name: &'static str, stage: StageFuture) {
        let failed = self.failed.clone();
        let token = self.token.clone();
        let board = self.board.clone();
        board.set_running(name, true);
        self.tracker.spawn(async move {
            // In a task of its own, so that a panic stops the process (and its supervisor
            // restarts it) instead of leaving the other stages running without this one.
            let outcome = tokio::spawn(stage).await;
            board.set_running(name, false);
            let error = match outcome {
                Err(panic) => Some(AppError::StagePanicked(name, panic.to_string())),
                Ok(Err(e)) => Some(AppError::Stage(Box::new(e))),
                Ok(Ok(())) if !token.is_cancelled() => Some(AppError::StageExited(name)),
                Ok(Ok(())) => None,
            };
            if let Some(e) = error {
                tracing::error!(stage = name, error = %e, "stage stopped");
                let _ = failed.send(e).await;
            } else {
                tracing::info!(stage = name, "stage stopped");
            }
        });
    }

    /// Waits for `shutdown` or the first stage failure, then stops every stage, giving
    /// in-flight work `timeout` to finish and be acknowledged.
    async fn wait(
        self,
        failures: &mut mpsc::Receiver<AppError>,
        shutdown: &CancellationToken,
        timeout: std::time::Duration,
    ) -> Result<(), AppError> {
        drop(self.failed);
        let failure = tokio::select! {
            _ = shutdown.cancelled() => None,
            failure = failures.recv() => failure,
        };
        match &failure {
            Some(_) => tracing::error!("a stage failed: stopping the others"),
            None => tracing::info!(?timeout, "shutting down: finishing in-flight work"),
        }
        self.token.cancel();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                "in-flight work did not finish in time; it is not acknowledged and will be redone"
            );
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Starts the stages the configuration enables.
fn start_stages(
    parts: &Parts,
    supervisor: &Supervisor,
    ingest: Option<TcpListener>,
) -> Result<(), AppError> {
    let stages = &parts.config.stages;
    if stages.populator {
        start_populator(parts, supervisor)?;
    }
    if stages.replication {
        start_replication(parts, supervisor)?;
    }
    if stages.status {
        start_status(parts, supervisor)?;
    }
    if stages.gc {
        start_gc(parts, supervisor)?;
    }
    if let Some(listener) = ingest {
        start_ingest(parts, supervisor, listener)?;
    }
    Ok(())
}

fn start_populator(parts: &Parts, supervisor: &Supervisor) -> Result<(), AppError> {
    let (config, token) = (&parts.config, &supervisor.token);
    if config.populator.feeds.contains(&Feed::Scan) {
        let status = supervisor.board.add("populator-scan");
        let scanner = Scanner::new(
            config.clone(),
            parts.stores.clone(),
            parts.publisher.clone(),
            parts.topics.clone(),
            parts.bus.state_reader()?,
            status,
        );
        supervisor.spawn("populator-scan", Box::pin(scanner.run(token.clone())));
    }
    if config.populator.feeds.contains(&Feed::Events) {
        let status = supervisor.board.add("populator-events");
        let feed = EventFeed {
            config: config.clone(),
            publisher: parts.publisher.clone(),
            topics: parts.topics.clone(),
            subscription: parts
                .bus
                .subscribe("populator-events", &[&config.populator.events_topic])?,
            status,
        };
        supervisor.spawn("populator-events", Box::pin(feed.run(token.clone())));
    }
    Ok(())
}

fn start_replication(parts: &Parts, supervisor: &Supervisor) -> Result<(), AppError> {
    let topics = &parts.topics;
    let processor = ReplicationProcessor::new(
        parts.config.replication.clone(),
        parts.stores.clone(),
        parts.publisher.clone(),
        topics.clone(),
        Subscriptions {
            entries: parts.bus.subscribe("replication", &[&topics.replication])?,
            retries: parts.bus.subscribe("replication-retry", &[&topics.retry])?,
        },
        &parts.config.locations,
        Holds {
            gates: parts.gates.clone(),
            pauses: parts.pauses.clone(),
        },
    );
    supervisor.board.register("replication", processor.status());
    let run = processor.run(supervisor.token.clone());
    supervisor.spawn("replication", Box::pin(run));
    Ok(())
}

fn start_status(parts: &Parts, supervisor: &Supervisor) -> Result<(), AppError> {
    let processor = StatusProcessor::new(
        parts.publisher.clone(),
        parts.topics.clone(),
        parts.bus.subscribe("status", &[&parts.topics.status])?,
        parts.bus.state_reader()?,
        &parts.config.status,
        parts.config.locations.keys().cloned().collect(),
    );
    supervisor.board.register("status", processor.status());
    supervisor.spawn("status", Box::pin(processor.run(supervisor.token.clone())));
    Ok(())
}

fn start_gc(parts: &Parts, supervisor: &Supervisor) -> Result<(), AppError> {
    let collector = GarbageCollector::new(
        parts.config.gc.clone(),
        Policy::new(&parts.config),
        parts.stores.clone(),
        parts.publisher.clone(),
        parts.topics.clone(),
        parts.bus.subscribe("gc", &[&parts.topics.gc])?,
    );
    supervisor.board.register("gc", collector.status());
    supervisor.spawn("gc", Box::pin(collector.run(supervisor.token.clone())));
    Ok(())
}

fn start_ingest(
    parts: &Parts,
    supervisor: &Supervisor,
    listener: TcpListener,
) -> Result<(), AppError> {
    let config = &parts.config;
    let Some(settings) = config.ingest.clone() else {
        return Ok(());
    };
    let store = parts.stores.get(&settings.location).cloned();
    let location = config.locations.get(&settings.location).cloned();
    let (Some(store), Some(location)) = (store, location) else {
        return Err(AppError::Listen(format!(
            "ingest.location {:?} is not a configured location",
            settings.location
        )));
    };
    if let Store::Fs(fs) = &store {
        fs.limit_staged(settings.max_staged);
    }
    let ingest = Ingest {
        store,
        rules: config
            .rules
            .iter()
            .filter(|r| r.source == location.name)
            .cloned()
            .collect(),
        location,
        publisher: parts.publisher.clone(),
        topic: parts.topics.replication.clone(),
        stats: Arc::default(),
        commits: TaskTracker::new(),
        bodies: Arc::new(tokio::sync::Semaphore::new(
            (settings.body_memory / ingest::BODY_UNIT) as usize,
        )),
        body_idle: settings.header_timeout,
    };
    let token = supervisor.token.clone();
    let serve = async move {
        ingest::serve(listener, &settings, ingest, token).await;
        Ok(())
    };
    supervisor.spawn("ingest", Box::pin(serve));
    Ok(())
}

/// What the admin server reads and acts on.
fn admin_state(parts: &Parts, supervisor: &Supervisor) -> Result<Admin, AppError> {
    Ok(Admin {
        bus: parts.bus.clone(),
        topics: parts.topics.clone(),
        stores: parts.stores.clone(),
        stages: supervisor.board.clone(),
        publisher: parts.publisher.clone(),
        config: parts.config.clone(),
        gates: parts.gates.clone(),
        pauses: parts.pauses.clone(),
        views: Views::new(
            &parts.bus,
            &parts.topics.status_state,
            &parts.topics.failed,
            parts.config.queue.partitions,
        )?,
    })
}
