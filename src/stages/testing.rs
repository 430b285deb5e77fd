//! For the stages' unit tests: a site on this host — a configuration in a temporary
//! directory, the embedded queue with ferry's topics, fs locations — and no servers.

use crate::bus::{Bus, Topics};
use crate::config::Config;

/// A site built from a configuration, its paths under a temporary directory.
pub struct LocalSite {
    /// Removed with the site.
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub bus: Bus,
    pub topics: Topics,
}

/// Writes `toml` (with `{root}` standing for the temporary directory) as the configuration,
/// loads it as `ferry` would, opens the embedded queue and creates the topics.
pub async fn local_site(toml: &str) -> LocalSite {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    let text = toml.replace("{root}", &dir.path().display().to_string());
    std::fs::write(&path, text).expect("write config");
    let config = crate::config::load(&path).expect("a valid configuration");
    let bus = Bus::connect(&config.queue).expect("the embedded queue opens");
    let topics = Topics::new(&config.queue.topic_prefix);
    bus.ensure_topics(&crate::bus::topic_specs(&config.queue, &topics), 1)
        .await
        .expect("topics");
    LocalSite {
        dir,
        config,
        bus,
        topics,
    }
}
