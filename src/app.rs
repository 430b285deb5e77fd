//! Builds the stages from a validated [`Config`], runs them under one task tracker, and tears
//! them down in order: on shutdown (or when any stage fails) every stage is cancelled, in-flight
//! work gets `shutdown_timeout` to finish and be acknowledged, then offsets are committed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin, Views};
use crate::bus::{self, Bus, BusError, Topics};
use crate::config::{Config, Feed};
use crate::control::Pauses;
use crate::ingest::{self, Ingest};
use crate::stages::gc::{GarbageCollector, Policy};
use crate::stages::populator::events::EventFeed;
use crate::stages::populator::scan::Scanner;
use crate::stages::populator::PopulatorStats;
use crate::stages::replication::gate::Gates;
use crate::stages::replication::{Holds, ReplicationProcessor, Subscriptions};
use crate::stages::status::StatusProcessor;
use crate::stages::StageError;
use crate::storage::{Store, Stores};

/// How often the locations are swept of what crashed processes left behind (stale temporary
/// files, abandoned multipart uploads): their age limits are a day and a week.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why ferry stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot start: {0}")]
    Start(#[from] BusError),
    #[error("cannot start: {0}")]
    Listen(String),
    #[error("stage failed: {0}")]
    Stage(#[from] StageError),
    #[error("stage {0} stopped unexpectedly")]
    StageExited(&'static str),
    #[error("stage {0} crashed (a bug; please report it with the log): {1}")]
    StagePanicked(&'static str, String),
}

/// Runs every configured stage until `shutdown` is cancelled or a stage fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let config = Arc::new(config);
    let topics = Topics::new(&config.queue.topic_prefix);
    let bus = Bus::connect(&config.queue)?;
    let mut specs = bus::topic_specs(&config.queue, &topics);
    if config.stages.populator && config.populator.feeds.contains(&Feed::Events) {
        specs.push(bus::TopicSpec {
            name: config.populator.events_topic.clone(),
            partitions: config.queue.partitions,
            compacted: false,
        });
        // An events topic made by someone else may have any partition count: don't insist.
        if bus
            .partition_count(&config.populator.events_topic)
            .await
            .unwrap_or(0)
            > 0
        {
            specs.pop();
        }
    }
    bus.ensure_topics(&specs, config.queue.replication_factor)
        .await?;
    tracing::info!(queue = %Bus::describe(&config.queue), topics = specs.len(), "topics ready");

    // Bound before anything runs, so a taken port stops ferry at once with a clear error.
    let admin_listener = admin::bind(&config.admin).await.map_err(AppError::Listen)?;
    let ingest_listener = match &config.ingest {
        Some(ingest) => Some(ingest::bind(ingest).await.map_err(AppError::Listen)?),
        None => None,
    };

    let stores = Stores::connect(&config).await;
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

    let stages = shutdown.child_token();
    let tracker = TaskTracker::new();
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<AppError>(8);
    let publisher = bus.publisher();

    let running = Arc::new(admin::Stages::default());
    // Pauses asked before this start hold from the first entry on.
    let pauses = Pauses::default();
    pauses.reload(&bus.state_reader()?, &topics).await?;
    tracker.spawn(
        pauses
            .clone()
            .follow(bus.clone(), topics.clone(), stages.clone()),
    );
    tracker.spawn(stores.clone().sweep_every(SWEEP_INTERVAL, stages.clone()));
    let gates = Arc::new(Gates::new(config.locations.keys().cloned()));
    let spawn = |name: &'static str,
                 stage: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), StageError>> + Send>,
    >| {
        let failed = failed_tx.clone();
        let token = stages.clone();
        let running = running.clone();
        running.set(name, true);
        tracker.spawn(async move {
            // In a task of its own, so that a panic stops the process (and its supervisor
            // restarts it) instead of leaving the other stages running without this one.
            let outcome = tokio::spawn(stage).await;
            running.set(name, false);
            let error = match outcome {
                Err(panic) => Some(AppError::StagePanicked(name, panic.to_string())),
                Ok(Err(e)) => Some(AppError::Stage(e)),
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
    };

    if config.stages.populator {
        let stats = Arc::new(PopulatorStats::default());
        if config.populator.feeds.contains(&Feed::Scan) {
            let scanner = Scanner::new(
                config.clone(),
                stores.clone(),
                publisher.clone(),
                topics.clone(),
                bus.state_reader()?,
                stats.clone(),
            );
            spawn("populator-scan", Box::pin(scanner.run(stages.clone())));
        }
        if config.populator.feeds.contains(&Feed::Events) {
            let feed = EventFeed {
                config: config.clone(),
                publisher: publisher.clone(),
                topics: topics.clone(),
                subscription: bus
                    .subscribe("populator-events", &[&config.populator.events_topic])?,
                stats,
            };
            spawn("populator-events", Box::pin(feed.run(stages.clone())));
        }
    }
    if config.stages.replication {
        let processor = ReplicationProcessor::new(
            config.replication.clone(),
            stores.clone(),
            publisher.clone(),
            topics.clone(),
            Subscriptions {
                entries: bus.subscribe("replication", &[&topics.replication])?,
                retries: bus.subscribe("replication-retry", &[&topics.retry])?,
            },
            &config.locations,
            Holds {
                gates: gates.clone(),
                pauses: pauses.clone(),
            },
        );
        spawn("replication", Box::pin(processor.run(stages.clone())));
    }
    if config.stages.status {
        let processor = StatusProcessor::new(
            publisher.clone(),
            topics.clone(),
            bus.subscribe("status", &[&topics.status])?,
            bus.state_reader()?,
            &config.status,
            config.locations.keys().cloned().collect(),
        );
        spawn("status", Box::pin(processor.run(stages.clone())));
    }
    if config.stages.gc {
        let collector = GarbageCollector::new(
            config.gc.clone(),
            config.replication.clone(),
            Policy::new(&config),
            stores.clone(),
            publisher.clone(),
            topics.clone(),
            bus.subscribe("gc", &[&topics.gc])?,
        );
        spawn("gc", Box::pin(collector.run(stages.clone())));
    }
    if let (Some(settings), Some(listener)) = (config.ingest.clone(), ingest_listener) {
        let store = stores.get(&settings.location).cloned();
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
            publisher: publisher.clone(),
            topic: topics.replication.clone(),
            stats: Arc::default(),
            commits: tokio_util::task::TaskTracker::new(),
            bodies: Arc::new(tokio::sync::Semaphore::new(
                (settings.body_memory / ingest::BODY_UNIT) as usize,
            )),
            body_idle: settings.header_timeout,
        };
        let token = stages.clone();
        spawn(
            "ingest",
            Box::pin(async move {
                ingest::serve(listener, &settings, ingest, token).await;
                Ok(())
            }),
        );
    }
    // Not a stage: it answers until the end, so readiness reports stages stopping.
    let admin_server = tokio::spawn(admin::serve(
        admin_listener,
        Admin {
            bus: bus.clone(),
            topics: topics.clone(),
            stores: stores.clone(),
            stages: running.clone(),
            publisher: publisher.clone(),
            config: config.clone(),
            gates,
            pauses,
            views: Views::new(
                &bus,
                &topics.status_state,
                &topics.failed,
                config.queue.partitions,
            )?,
        },
        shutdown.clone(),
    ));
    drop(failed_tx);
    tracker.close();

    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        failure = failed_rx.recv() => failure,
    };
    match &failure {
        Some(_) => tracing::error!("a stage failed: stopping the others"),
        None => {
            tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: finishing in-flight work")
        }
    }
    stages.cancel();
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.shutdown_timeout, "in-flight work did not finish in time; it is not acknowledged and will be redone");
    }
    admin_server.abort();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
